"""Reconstruction terms (S6): the masked model must reproduce the clean output.

Each term names a `ReconPlan`; the step runs exactly the forwards the distinct plans ask for,
and the term averages its output distance over mask samples and forwards.
"""

from __future__ import annotations

from typing import Literal

from pydantic.dataclasses import dataclass

from param_decomp.losses.base import TERM_CONFIG, ConsumesPlan, PlanFields, StepContext, TermResult
from param_decomp.losses.distances import OUTPUT_DISTANCES
from param_decomp.losses.registry import register_term

Distance = Literal["mse", "kl"]


class _ReconTerm(ConsumesPlan):
    """Shared behaviour; subclasses fix `routing` and their YAML `type`."""

    coeff: float
    distance: Distance
    type: str

    def __call__(self, ctx: StepContext) -> TermResult:
        dist = OUTPUT_DISTANCES[self.distance]
        return self.plan_result(ctx, lambda out: dist(out, ctx.clean_output))


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class StochasticRecon(_ReconTerm, PlanFields):
    distance: Distance = "mse"
    type: Literal["stochastic_recon"] = "stochastic_recon"
    routing = "all"


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class StochasticReconLayerwise(_ReconTerm, PlanFields):
    distance: Distance = "mse"
    type: Literal["stochastic_recon_layerwise"] = "stochastic_recon_layerwise"
    routing = "each"


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class StochasticReconSubset(_ReconTerm, PlanFields):
    distance: Distance = "mse"
    type: Literal["stochastic_recon_subset"] = "stochastic_recon_subset"
    routing = "subset"


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class CIMaskedRecon(_ReconTerm, PlanFields):
    """mask = ci exactly: one forward, no source, no delta channel (S6.4)."""

    n_mask_samples: Literal[1] = 1
    delta_component: Literal[False] = False
    distance: Distance = "mse"
    type: Literal["ci_masked_recon"] = "ci_masked_recon"
    routing = "ci"
