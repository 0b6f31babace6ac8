"""Faithfulness: the components must sum to the target weights (S4.1)."""

from __future__ import annotations

from typing import Literal

import jax
from pydantic import PositiveFloat
from pydantic.dataclasses import dataclass

from param_decomp.decomposition.components import faithfulness_sq_error
from param_decomp.losses.base import TERM_CONFIG, Needs, StepContext, TermResult
from param_decomp.losses.registry import register_term


def faithfulness_loss(weights: dict, VU: dict, remat: bool = False) -> object:
    """sum_sites ||W - V U||^2 / sum_sites numel(W). With `remat` each site's V U (a
    target-sized product) is formed again in the backward instead of being kept (S15.9)."""
    sq_error = jax.checkpoint(faithfulness_sq_error) if remat else faithfulness_sq_error
    total = sum(sq_error(weights[s], *VU[s]) for s in VU)
    # a float: an 8B model's site count (~7e9) overflows the int32 a Python int becomes
    numel = float(sum(weights[s].size for s in VU))
    return total / numel


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class Faithfulness:
    coeff: PositiveFloat
    type: Literal["faithfulness"] = "faithfulness"

    def needs(self) -> Needs:
        return Needs()

    def __call__(self, ctx: StepContext) -> TermResult:
        value = faithfulness_loss(ctx.weights, ctx.VU, ctx.remat_faithfulness)
        return TermResult(self.coeff * value, {"faithfulness": value})
