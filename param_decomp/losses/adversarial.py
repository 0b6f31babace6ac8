"""Adversarial reconstruction terms (S6A): PGD picks the mask sources that maximise the loss.

`pgd_recon` runs a fresh projected sign-gradient ascent every step; `persistent_pgd_recon`
keeps its sources (and their Adam moments) in the train state across steps. Either term's
value is the output distance of the masked forward at the adversary's final sources; the
decomposition's gradient flows through that final forward only.
"""

from __future__ import annotations

from typing import Annotated, Literal

import jax.numpy as jnp
from pydantic import Field, NonNegativeInt, PositiveFloat
from pydantic.dataclasses import dataclass

from param_decomp.decomposition.adversary import (
    AdversaryInit,
    AdversaryRouting,
    AdversarySpec,
    SourceSharing,
)
from param_decomp.losses.base import TERM_CONFIG, Needs, StepContext, TermResult
from param_decomp.losses.distances import OUTPUT_DISTANCES
from param_decomp.losses.registry import register_term

Distance = Literal["mse", "kl"]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class _AdversarialTerm:
    coeff: float
    distance: Distance
    type: str

    def spec(self) -> AdversarySpec:
        raise NotImplementedError

    def needs(self) -> Needs:
        return Needs(adversary=self.spec())

    def __call__(self, ctx: StepContext) -> TermResult:
        dist = OUTPUT_DISTANCES[self.distance]
        outs = ctx.adversarial_outputs[self.spec()]
        value = jnp.mean(jnp.stack([dist(out, ctx.clean_output) for out in outs]))
        return TermResult(self.coeff * value, {self.type: value})


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class PGDRecon(_AdversarialTerm):
    """Fresh PGD every step: `n_steps` sign-gradient ascents of size `step_size` from `init`."""

    coeff: PositiveFloat
    n_steps: NonNegativeInt = 1
    step_size: PositiveFloat = 0.1
    init: AdversaryInit = "random"
    source_sharing: SourceSharing = "batch"
    routing: AdversaryRouting = "all"
    delta_component: bool = True
    distance: Distance = "mse"
    type: Literal["pgd_recon"] = "pgd_recon"

    def spec(self) -> AdversarySpec:
        return AdversarySpec(
            routing=self.routing,
            delta=self.delta_component,
            distance=self.distance,
            n_steps=self.n_steps,
            step_size=self.step_size,
            init=self.init,
            sharing=self.source_sharing,
        )


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class PersistentPGDRecon(_AdversarialTerm):
    """Sources in the train state: `n_warmup_steps` sign ascents per step, then one Adam
    ascent (`lr`, `beta1`, `beta2`) on the gradient of the step's own backward. The sources
    are one vector per site shared by every position (`source_sharing: batch` only)."""

    coeff: PositiveFloat
    lr: PositiveFloat = 0.01
    beta1: Beta = 0.9
    beta2: Beta = 0.999
    n_warmup_steps: NonNegativeInt = 0
    step_size: PositiveFloat = 0.1
    init: AdversaryInit = "random"
    source_sharing: Literal["batch"] = "batch"
    routing: AdversaryRouting = "all"
    delta_component: bool = True
    distance: Distance = "mse"
    type: Literal["persistent_pgd_recon"] = "persistent_pgd_recon"

    def spec(self) -> AdversarySpec:
        return AdversarySpec(
            routing=self.routing,
            delta=self.delta_component,
            distance=self.distance,
            n_steps=self.n_warmup_steps,
            step_size=self.step_size,
            init=self.init,
            sharing=self.source_sharing,
            persistent=True,
            lr=self.lr,
            b1=self.beta1,
            b2=self.beta2,
        )
