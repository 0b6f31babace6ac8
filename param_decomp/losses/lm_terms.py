"""LM decomposition terms (S6.7): cross-entropy / focal of the MASKED model against next tokens.

They consume a reconstruction plan's masked logits and the batch's token ids; the same pure
functions (`lm_objectives`) serve target pretraining objectives.
"""

from __future__ import annotations

from typing import Annotated, Literal

import jax.numpy as jnp
from jaxtyping import Array
from pydantic import Field, PositiveFloat, PositiveInt
from pydantic.dataclasses import dataclass

from param_decomp.decomposition.sources import ReconPlan, Routing, SourceKind
from param_decomp.losses.base import TERM_CONFIG, Needs, StepContext, TermResult
from param_decomp.losses.lm_objectives import cross_entropy, focal
from param_decomp.losses.registry import register_term


def next_token_pairs(logits: Array, tokens: Array) -> tuple[Array, Array]:
    """Position t predicts token t+1; the last position has no label."""
    return logits[:, :-1], tokens[:, 1:]


class _MaskedLMTerm:
    coeff: float
    routing: Routing
    source: SourceKind
    n_mask_samples: int
    delta_component: bool
    type: str

    def plan(self) -> ReconPlan:
        return ReconPlan(self.routing, self.source, self.n_mask_samples, self.delta_component)

    def needs(self) -> Needs:
        return Needs(plan=self.plan())

    def objective(self, logits: Array, labels: Array) -> Array:
        raise NotImplementedError

    def __call__(self, ctx: StepContext) -> TermResult:
        outputs = ctx.recon_outputs[self.plan()]
        values = [
            self.objective(*next_token_pairs(out, ctx.batch))
            for sample in outputs
            for out in sample
        ]
        value = jnp.mean(jnp.stack(values))
        return TermResult(self.coeff * value, {self.type: value})


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class MaskedCrossEntropy(_MaskedLMTerm):
    coeff: PositiveFloat
    routing: Routing = "all"
    source: SourceKind = "continuous"
    n_mask_samples: PositiveInt = 1
    delta_component: bool = True
    type: Literal["cross_entropy"] = "cross_entropy"

    def objective(self, logits: Array, labels: Array) -> Array:
        return cross_entropy(logits, labels)


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class MaskedFocal(_MaskedLMTerm):
    coeff: PositiveFloat
    gamma: Annotated[float, Field(ge=0.0)] = 2.0
    routing: Routing = "all"
    source: SourceKind = "continuous"
    n_mask_samples: PositiveInt = 1
    delta_component: bool = True
    type: Literal["focal"] = "focal"

    def objective(self, logits: Array, labels: Array) -> Array:
        return focal(logits, labels, self.gamma)
