"""LM decomposition terms (S6.7): cross-entropy / focal of the MASKED model against next tokens.

They consume a reconstruction plan's masked logits and the batch's token ids; the same pure
functions (`lm_objectives`) serve target pretraining objectives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from jaxtyping import Array
from pydantic import Field
from pydantic.dataclasses import dataclass

from param_decomp.decomposition.sources import Routing
from param_decomp.losses.base import TERM_CONFIG, ConsumesPlan, PlanFields, StepContext, TermResult
from param_decomp.losses.lm_objectives import cross_entropy, focal
from param_decomp.losses.registry import register_term


def next_token_pairs(logits: Array, tokens: Array) -> tuple[Array, Array]:
    """Position t predicts token t+1; the last position has no label."""
    return logits[:, :-1], tokens[:, 1:]


class _MaskedLMTerm(ConsumesPlan):
    """Shared behaviour; every registered subclass defines `objective(logits, labels)`."""

    coeff: float
    type: str
    objective: Callable[[Array, Array], Array]

    def __call__(self, ctx: StepContext) -> TermResult:
        return self.plan_result(ctx, lambda out: self.objective(*next_token_pairs(out, ctx.batch)))


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class MaskedCrossEntropy(_MaskedLMTerm, PlanFields):
    routing: Routing = "all"
    type: Literal["cross_entropy"] = "cross_entropy"

    def objective(self, logits: Array, labels: Array) -> Array:
        return cross_entropy(logits, labels)


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class MaskedFocal(_MaskedLMTerm, PlanFields):
    gamma: Annotated[float, Field(ge=0.0)] = 2.0
    routing: Routing = "all"
    type: Literal["focal"] = "focal"

    def objective(self, logits: Array, labels: Array) -> Array:
        return focal(logits, labels, self.gamma)
