"""Importance minimality (S7) and its optional frequency block (S8), from one shared pass.

Per site, f_c = mean over the global (batch, pos) of psi(ci_upper). The activity part is
lp = sum_sites sum_c f_c; the frequency part is freq = sum_sites sum_c f_c log2(1 + a' f_c)
with an explicit a' = reference_token_count, so its curvature does not move with the batch
size (S8.2). Sites are never pooled inside the log (S8.3). Both parts read the SAME f_c.
"""

from __future__ import annotations

from typing import Annotated, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float
from pydantic import Field, PositiveFloat, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs

from param_decomp.losses.base import TERM_CONFIG, Needs, StepContext, TermResult
from param_decomp.losses.density_target import (
    L0_KEY,
    MULTIPLIER_KEY,
    DensityTarget,
    measured_l0,
)
from param_decomp.losses.registry import register_term

Frac = Annotated[float, Field(ge=0.0, le=1.0)]


def anneal(
    start: float, final: float | None, start_frac: float, end_frac: float, progress: Array
) -> Array:
    """Linear anneal from `start` to `final` over the training-fraction window (S7.2)."""
    if final is None:
        return jnp.asarray(start, jnp.float32)
    span = max(end_frac - start_frac, 1e-12)
    t = jnp.clip((progress - start_frac) / span, 0.0, 1.0)
    value = start + (final - start) * t
    return jnp.where(progress >= end_frac, final, value).astype(jnp.float32)


def component_means(psi_values: Float[Array, "*bt C"]) -> Float[Array, " C"]:
    """f_c: the mean of psi over every leading (batch, pos) axis, in fp32 (S7.1)."""
    flat = psi_values.reshape(-1, psi_values.shape[-1]).astype(jnp.float32)
    return jnp.mean(flat, axis=0)


def activity(f_by_site: dict[str, Float[Array, " C"]]) -> Float[Array, ""]:
    """lp = sum_sites sum_c f_c."""
    return sum(jnp.sum(f) for f in f_by_site.values())


def frequency(
    f_by_site: dict[str, Float[Array, " C"]], reference_token_count: float
) -> Float[Array, ""]:
    """freq = sum_sites sum_c f_c log2(1 + a' f_c), per site, never pooled (S8.1, S8.3)."""
    return sum(jnp.sum(f * jnp.log2(1.0 + reference_token_count * f)) for f in f_by_site.values())


@dataclass(frozen=True, config=TERM_CONFIG)
class FrequencyBlock:
    coeff: PositiveFloat
    reference_token_count: PositiveFloat


@dataclass(frozen=True)
class PNormPsi:
    """psi = (ci_upper + eps)^p, p annealed (S7.2)."""

    p_start: float
    p_final: float | None
    anneal_start_frac: float
    anneal_end_frac: float
    eps: float

    def p(self, progress: Array) -> Array:
        return anneal(
            self.p_start, self.p_final, self.anneal_start_frac, self.anneal_end_frac, progress
        )

    def __call__(self, ci_upper: Array, progress: Array) -> Array:
        return (ci_upper + self.eps) ** self.p(progress)

    def metrics(self, progress: Array) -> dict[str, Array]:
        return {"train/imp_min/p": self.p(progress)}


@dataclass(frozen=True)
class SmoothL0Psi:
    """psi = ci^2 / (ci^2 + gamma^2), times (1 + gamma^2) when normalised at one (S7.3)."""

    gamma_start: float
    gamma_final: float | None
    anneal_start_frac: float
    anneal_end_frac: float
    normalize_at_one: bool

    def gamma(self, progress: Array) -> Array:
        return anneal(
            self.gamma_start,
            self.gamma_final,
            self.anneal_start_frac,
            self.anneal_end_frac,
            progress,
        )

    def __call__(self, ci_upper: Array, progress: Array) -> Array:
        g2 = self.gamma(progress) ** 2
        psi = ci_upper**2 / (ci_upper**2 + g2)
        return psi * (1.0 + g2) if self.normalize_at_one else psi

    def metrics(self, progress: Array) -> dict[str, Array]:
        return {"train/smooth_l0/gamma": self.gamma(progress)}


def _importance_result(
    name: str,
    coeff: float,
    freq_block: FrequencyBlock | None,
    f_by_site: dict[str, Array],
    extra: dict,
    density: DensityTarget | None = None,
    ctx: StepContext | None = None,
) -> TermResult:
    lp = activity(f_by_site)
    parts = {name: lp}
    metrics = dict(extra)
    if freq_block is not None:
        parts["frequency"] = frequency(f_by_site, freq_block.reference_token_count)
        all_f = jnp.concatenate([f for f in f_by_site.values()])
        metrics["train/frequency/mean_f"] = jnp.mean(all_f)
    if density is not None and ctx is not None:
        weighted, density_metrics = _constrained(coeff, freq_block, f_by_site, density, ctx)
        metrics.update(density_metrics)
    elif freq_block is not None:
        a_ref, freq_coeff = freq_block.reference_token_count, freq_block.coeff
        # one fused sum f (coeff + freq_coeff log2(1 + a' f)): with coeff 1, freq_coeff = beta
        # and a' = B T it is the legacy rolled expression operation for operation (S8.4)
        weighted = sum(
            jnp.sum(f * (coeff + freq_coeff * jnp.log2(1.0 + a_ref * f)))
            for f in f_by_site.values()
        )
    else:
        weighted = coeff * lp
    return TermResult(weighted, parts, metrics)


def _constrained(
    coeff: float,
    freq_block: FrequencyBlock | None,
    f_by_site: dict[str, Array],
    density: DensityTarget,
    ctx: StepContext,
) -> tuple[Array, dict[str, Array]]:
    """S7A.1: each site's importance (and frequency) part times its multiplier lambda_s, which
    the step's dual ascent owns (no gradient flows into it); the site's measured L0 is logged
    for that ascent. Without multipliers in the context (an evaluation), lambda_s = 1."""
    multipliers = ctx.multipliers or {}
    weighted = jnp.zeros((), jnp.float32)
    metrics: dict[str, Array] = {}
    for site, f in f_by_site.items():
        lam = jax.lax.stop_gradient(multipliers.get(site, jnp.ones((), jnp.float32)))
        per_c = coeff * jnp.ones_like(f)
        if freq_block is not None:
            a_ref = freq_block.reference_token_count
            per_c = per_c + freq_block.coeff * jnp.log2(1.0 + a_ref * f)
        weighted = weighted + lam * jnp.sum(f * per_c)
        metrics[MULTIPLIER_KEY + site] = lam
        C = ctx.ci_lower[site].shape[-1]
        metrics[L0_KEY + site] = measured_l0(ctx.ci_lower[site], density.threshold) / C
    return weighted, metrics


LEGACY_BETA_HELP = (
    "the legacy `beta` form f(1 + beta log2(1 + B T f)) is replaced by an explicit frequency "
    "block; write instead:\n  frequency: {{coeff: {freq_coeff}, reference_token_count: <B*T of the "
    "legacy run, e.g. batch_size * seq_len>}}\n(frequency.coeff = coeff * beta = {freq_coeff})"
)


def _reject_legacy_beta(data: object) -> object:
    """S8.4: `beta` is refused with the equivalent explicit frequency block."""
    fields = (data.kwargs or {}) if isinstance(data, ArgsKwargs) else data
    if isinstance(fields, dict) and "beta" in fields:
        data = fields
        coeff = data.get("coeff", "<coeff>")
        beta = data["beta"]
        try:
            freq_coeff: object = float(coeff) * float(beta)
        except (TypeError, ValueError):
            freq_coeff = f"{coeff} * {beta}"
        raise ValueError(LEGACY_BETA_HELP.format(freq_coeff=freq_coeff))
    return data


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class ImportanceMinimality:
    """p-norm importance minimality with optional frequency block."""

    coeff: PositiveFloat
    pnorm: PositiveFloat = 1.0
    p_anneal_final_p: PositiveFloat | None = None
    p_anneal_start_frac: Frac = 0.0
    p_anneal_end_frac: Frac = 1.0
    eps: Annotated[float, Field(ge=0.0)] = 1e-12
    frequency: FrequencyBlock | None = None
    density_target: DensityTarget | None = None
    type: Literal["importance_minimality"] = "importance_minimality"

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: object) -> object:
        return _reject_legacy_beta(data)

    def psi(self) -> PNormPsi:
        return PNormPsi(
            self.pnorm,
            self.p_anneal_final_p,
            self.p_anneal_start_frac,
            self.p_anneal_end_frac,
            self.eps,
        )

    def needs(self) -> Needs:
        return Needs(psi=self.psi())

    def __call__(self, ctx: StepContext) -> TermResult:
        psi = self.psi()
        return _importance_result(
            "importance_minimality",
            self.coeff,
            self.frequency,
            ctx.component_means[psi],
            psi.metrics(ctx.progress),
            self.density_target,
            ctx,
        )


@register_term
@dataclass(frozen=True, config=TERM_CONFIG)
class SmoothL0:
    """Smooth-L0 importance minimality with optional frequency block."""

    coeff: PositiveFloat
    gamma: PositiveFloat = 0.1
    gamma_final: PositiveFloat | None = None
    gamma_anneal_start_frac: Frac = 0.0
    gamma_anneal_end_frac: Frac = 1.0
    normalize_at_one: bool = False
    frequency: FrequencyBlock | None = None
    density_target: DensityTarget | None = None
    type: Literal["smooth_l0"] = "smooth_l0"

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: object) -> object:
        return _reject_legacy_beta(data)

    def psi(self) -> SmoothL0Psi:
        return SmoothL0Psi(
            self.gamma,
            self.gamma_final,
            self.gamma_anneal_start_frac,
            self.gamma_anneal_end_frac,
            self.normalize_at_one,
        )

    def needs(self) -> Needs:
        return Needs(psi=self.psi())

    def __call__(self, ctx: StepContext) -> TermResult:
        psi = self.psi()
        return _importance_result(
            "smooth_l0",
            self.coeff,
            self.frequency,
            ctx.component_means[psi],
            psi.metrics(ctx.progress),
            self.density_target,
            ctx,
        )
