"""The constrained form of importance minimality (S7A): a target L0 per site, met by dual ascent.

A fixed importance coefficient trades sparsity against faithfulness differently on every site
and every target: one layer stays dense while another, which matters little to the output, is
switched off. The constrained form asks instead for

    min  reconstruction   s.t.   L0_s <= target_s = l0_frac * C_s   for every site s,

and weighs site s's importance by its own Lagrange multiplier lambda_s (times the term's
`coeff`). The primal player descends on the differentiable proxy (the p-norm or smooth-L0
f_c of S7); the dual player reads the constraint itself, the hard L0 (CI_lower > threshold,
the figure the eval reports), as in the proxy-Lagrangian of Cotter et al. (2019). The dual step
is multiplicative (ascent on log lambda), so lambda stays positive and its rate does not
depend on the scale of the coefficient:

    log lambda_s <- clip(log lambda_s + dual_lr * clip(L0_s / (l0_frac C_s) - 1, -1, 1),
                         log min_multiplier, log max_multiplier)

It rises while the site is denser than its target, falls while the site is sparser, and
stands still at L0_s = target_s. A site switched off (L0 near 0) loses its sparsity pressure
instead of being rewarded for it.
"""

from __future__ import annotations

from typing import Annotated

import jax.numpy as jnp
from jaxtyping import Array, Float
from pydantic import Field, PositiveFloat, model_validator
from pydantic.dataclasses import dataclass

from param_decomp.losses.base import TERM_CONFIG

MULTIPLIER_KEY = "train/density/multiplier/"
L0_KEY = "train/density/l0_frac/"


@dataclass(frozen=True, config=TERM_CONFIG)
class DensityTarget:
    """YAML: `density_target: {l0_frac: 0.05}` inside an importance term (S7A.1)."""

    l0_frac: Annotated[float, Field(gt=0.0, le=1.0)]
    dual_lr: PositiveFloat = 0.01
    threshold: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    min_multiplier: PositiveFloat = 1e-3
    max_multiplier: PositiveFloat = 1e3

    @model_validator(mode="after")
    def _ordered(self) -> DensityTarget:
        if not self.min_multiplier <= 1.0 <= self.max_multiplier:
            raise ValueError(
                "min_multiplier <= 1 <= max_multiplier is required (the multipliers start at 1, "
                f"the configured coeff); got {self.min_multiplier} and {self.max_multiplier}"
            )
        return self


def measured_l0(ci_lower: Float[Array, "*bt C"], threshold: float) -> Float[Array, ""]:
    """Mean number of components with CI_lower > threshold per position, over the global batch
    (S14.5's CI-L0, as the eval reports it)."""
    flat = ci_lower.reshape(-1, ci_lower.shape[-1])
    return jnp.mean(jnp.sum((flat > threshold).astype(jnp.float32), axis=-1))


def dual_update(
    multiplier: Float[Array, ""], l0_frac: Float[Array, ""], spec: DensityTarget
) -> Float[Array, ""]:
    """One multiplicative dual-ascent step (S7A.2); `l0_frac` is the measured L0 / C."""
    violation = jnp.clip(l0_frac / spec.l0_frac - 1.0, -1.0, 1.0)
    log_new = jnp.log(multiplier) + spec.dual_lr * violation
    bounded = jnp.clip(log_new, jnp.log(spec.min_multiplier), jnp.log(spec.max_multiplier))
    return jnp.exp(bounded).astype(jnp.float32)


def init_multipliers(sites: tuple[str, ...]) -> dict[str, Float[Array, ""]]:
    """lambda_s = 1 at step 0: the run starts at the configured coefficient."""
    return {s: jnp.ones((), jnp.float32) for s in sites}


def update_multipliers(
    multipliers: dict[str, Array], metrics: dict[str, Array], spec: DensityTarget
) -> dict[str, Array]:
    """Every site's dual step from the L0 share the step measured (`L0_KEY<site>`)."""
    return {s: dual_update(m, metrics[L0_KEY + s], spec) for s, m in multipliers.items()}
