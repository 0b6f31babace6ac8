"""The LossTerm protocol and the step context every term reads (SPEC §Objective).

A term is a frozen, validated dataclass. It declares what it consumes (`needs`); the objective
gathers those needs so the step computes each quantity once, and then calls every term on the
same `StepContext`. The step never switches on term names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import jax.numpy as jnp
from jaxtyping import Array, Float
from pydantic import ConfigDict, PositiveFloat, PositiveInt
from pydantic.dataclasses import dataclass as dataclass_validated

from param_decomp.decomposition.adversary import AdversarySpec
from param_decomp.decomposition.sources import ReconPlan, Routing, SourceKind

TERM_CONFIG = ConfigDict(extra="forbid")


class PsiSpec(Protocol):
    """A per-element importance penalty psi(ci_upper); hashable so equal specs share one pass."""

    def __call__(self, ci_upper: Array, progress: Array) -> Array: ...

    def metrics(self, progress: Array) -> dict[str, Array]: ...


@dataclass(frozen=True)
class Needs:
    psi: PsiSpec | None = None
    plan: ReconPlan | None = None
    adversary: AdversarySpec | None = None


@dataclass
class StepContext:
    """Everything the step computed once, shared by all terms.

    `component_means[psi][site]` is f_c = mean over the GLOBAL (batch, pos) of psi(ci_upper),
    `recon_outputs[plan]` is a list over mask samples of a list of forwards (one per live set).
    """

    batch: Array
    clean_output: Array
    weights: dict[str, Float[Array, "d_in d_out"]]
    VU: dict[str, tuple[Array, Array]]
    ci_lower: dict[str, Array]
    ci_upper: dict[str, Array]
    progress: Array
    remat_faithfulness: bool = False  # S15.9: recompute each site's V U in the backward
    component_means: dict[PsiSpec, dict[str, Float[Array, " C"]]] = field(default_factory=dict)
    recon_outputs: dict[ReconPlan, list[list[Array]]] = field(default_factory=dict)
    # S6A: the masked outputs at each adversary's final sources (one per live group), and those
    # sources (no gradient)
    adversarial_outputs: dict[AdversarySpec, list[Array]] = field(default_factory=dict)
    adversary_sources: dict[AdversarySpec, dict[str, Array]] = field(default_factory=dict)
    # S7A: each site's Lagrange multiplier of a density target (the step's dual ascent owns
    # them); None outside training or without a density target
    multipliers: dict[str, Array] | None = None


@dataclass(frozen=True)
class TermResult:
    """`weighted` enters the total; `parts` are the unweighted values logged as train/loss/<k>."""

    weighted: Array
    parts: dict[str, Array]
    metrics: dict[str, Array] = field(default_factory=dict)


class LossTerm(Protocol):
    type: str
    coeff: float

    def needs(self) -> Needs: ...

    def __call__(self, ctx: StepContext) -> TermResult: ...


OutputDistance = Callable[[Array, Array], Array]


@dataclass_validated(frozen=True, config=TERM_CONFIG)
class PlanFields:
    """YAML keys of every term that consumes masked forwards (S6)."""

    coeff: PositiveFloat
    n_mask_samples: PositiveInt = 1
    source: SourceKind = "continuous"
    delta_component: bool = True


class ConsumesPlan:
    """`needs` for terms reading one reconstruction plan; `routing` comes from the term."""

    routing: Routing
    n_mask_samples: int
    source: SourceKind
    delta_component: bool
    coeff: float
    type: str

    def plan(self) -> ReconPlan:
        return ReconPlan(self.routing, self.source, self.n_mask_samples, self.delta_component)

    def needs(self) -> Needs:
        return Needs(plan=self.plan())

    def plan_result(self, ctx: StepContext, per_output: Callable[[Array], Array]) -> TermResult:
        """`per_output` averaged over the plan's mask samples and forwards (S6.6), weighted by
        `coeff` and logged under the term's `type`."""
        outputs = ctx.recon_outputs[self.plan()]
        value = jnp.mean(jnp.stack([per_output(out) for sample in outputs for out in sample]))
        return TermResult(self.coeff * value, {self.type: value})
