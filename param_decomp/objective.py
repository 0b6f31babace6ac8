"""The config's loss list as one closed objective, and the one fused pass that feeds it.

`Objective.from_terms` gathers what the terms consume (distinct psi specs, distinct recon plans)
once, before anything compiles. `evaluate` then runs ONE clean target forward, ONE x @ V per
site, ONE CI evaluation, ONE per-component mean per distinct psi, and exactly the masked
forwards the distinct plans need (each reusing the clean products where its site input is the
clean one), and hands the shared `StepContext` to every term (SPEC S9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from param_decomp.decomposition.adversary import (
    AdversarySpec,
    adversary_forward,
    draw_adversary,
    live_groups,
    sign_ascent,
)
from param_decomp.decomposition.masked_forward import (
    CleanRecord,
    clean_forward,
    inner_acts,
    masked_site_fn,
)
from param_decomp.decomposition.sources import ReconPlan, SiteC, draw_plans_sources, live_sites
from param_decomp.losses.base import LossTerm, PsiSpec, StepContext
from param_decomp.losses.distances import OUTPUT_DISTANCES
from param_decomp.losses.importance import component_means
from param_decomp.targets.precision import (
    ComputeDtype,
    at_least_float32,
    compute_cast,
    module_in_dtype,
)

PlanSources = dict[ReconPlan, list[list[dict[str, Any]]]]
REMAT_PARTS = ("masked_forwards", "faithfulness")


@dataclass(frozen=True)
class CleanPass:
    """The fused pass up to the CI: the target and batch in the compute dtype, the clean
    output and per-site record, the frozen weights, V/U (masters and compute copies), x @ V
    and the CI."""

    compute_target: Any
    compute_x: Array
    clean_output: Array
    record: CleanRecord
    weights: dict[str, Array]
    VU: dict[str, tuple[Array, Array]]
    compute_VU: dict[str, tuple[Array, Array]]
    acts: dict[str, Array]
    ci_lower: dict[str, Array]
    ci_upper: dict[str, Array]


@dataclass(frozen=True)
class Objective:
    terms: tuple[LossTerm, ...]
    psi_specs: tuple[PsiSpec, ...]
    plans: tuple[ReconPlan, ...]
    adversaries: tuple[AdversarySpec, ...] = ()
    # S15.9: parts of the pass recomputed in the backward instead of kept ("masked_forwards",
    # "faithfulness"); a memory lever that leaves every value and gradient unchanged
    remat: tuple[str, ...] = ()

    @property
    def persistent(self) -> AdversarySpec | None:
        """The adversary whose sources live in the train state (at most one: S9.3, S6A.6)."""
        return next((a for a in self.adversaries if a.persistent), None)

    @property
    def density_target(self) -> Any:
        """The `density_target` of the importance term that has one (at most one, S7A.3), whose
        multipliers live in the train state; None without one."""
        return next(
            (t.density_target for t in self.terms if getattr(t, "density_target", None)), None
        )

    @classmethod
    def from_terms(
        cls, terms: tuple[LossTerm, ...] | list[LossTerm], remat: tuple[str, ...] | list[str] = ()
    ) -> Objective:
        terms = tuple(terms)
        names = [t.type for t in terms]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"loss types listed more than once: {sorted(dupes)}")
        psi_specs = tuple(dict.fromkeys(t.needs().psi for t in terms if t.needs().psi is not None))
        plans = tuple(dict.fromkeys(t.needs().plan for t in terms if t.needs().plan is not None))
        adversaries = tuple(
            dict.fromkeys(t.needs().adversary for t in terms if t.needs().adversary is not None)
        )
        if sum(a.persistent for a in adversaries) > 1:
            raise ValueError("at most one persistent adversary per objective")
        constrained = [t.type for t in terms if getattr(t, "density_target", None)]
        if len(constrained) > 1:
            raise ValueError(
                f"a density_target on more than one importance term ({constrained}): the sites' "
                "multipliers would be ambiguous; keep it on one (S7A.3)"
            )
        unknown = sorted(set(remat) - set(REMAT_PARTS))
        if unknown:
            raise ValueError(f"remat parts {unknown} unknown; allowed: {list(REMAT_PARTS)}")
        return cls(terms, psi_specs, plans, adversaries, tuple(remat))

    def masked_forward(self, target: Any, x: Array, site_fn: Any) -> Array:
        """One masked forward of the target, its output in float32 (S15.6); with
        "masked_forwards" in `remat` its activations are recomputed in the backward (S15.9)."""
        with jax.named_scope("masked_forward"):
            if "masked_forwards" in self.remat:
                return jax.checkpoint(lambda x: at_least_float32(target(x, site_fn)))(x)
            return at_least_float32(target(x, site_fn))

    def draw_sources(
        self, key: PRNGKeyArray, batch_shape: tuple[int, ...], sites: tuple[str, ...], C: SiteC
    ) -> PlanSources:
        """Every plan's sources from one draw (S6.5); each adversary's initial sources and
        routing from its own fold of the key (S6A.2), so the plans' draw is unchanged."""
        out: PlanSources = draw_plans_sources(self.plans, key, batch_shape, sites, C)
        for i, spec in enumerate(self.adversaries):
            out[spec] = draw_adversary(spec, jax.random.fold_in(key, i), batch_shape, sites, C)
        return out

    def context_from_ci(
        self,
        target: Any,
        x: Array,
        clean_output: Array,
        record: CleanRecord,
        weights: dict[str, Array],
        VU: dict[str, tuple[Array, Array]],
        ci_lower: dict[str, Array],
        ci_upper: dict[str, Array],
        sources: PlanSources,
        progress: Array,
        acts: dict[str, Array] | None = None,
        adversary_sources: dict[str, Array] | None = None,
        compute_VU: dict[str, tuple[Array, Array]] | None = None,
        compute_x: Array | None = None,
    ) -> StepContext:
        """The shared quantities downstream of the CI: per-component means and masked forwards.

        `record` is the clean forward's per-site inputs and outputs and `acts` the inner
        activations x @ V on them (formed here when not given): every masked forward reuses
        them where its site input is the clean one (S9.4). `VU` are the float32 masters the
        losses read; `compute_VU` (default `VU`) their compute-dtype copies and `compute_x`
        (default `x`) the batch in the compute dtype, which the masked forwards run on and whose
        outputs are read in float32 (S15.6).
        """
        sites = tuple(VU)
        if compute_VU is None:
            compute_VU = VU
        if compute_x is None:
            compute_x = x
        if acts is None:
            acts = inner_acts(record, compute_VU)
        ctx = StepContext(
            x,
            clean_output,
            weights,
            VU,
            ci_lower,
            ci_upper,
            jnp.asarray(progress, jnp.float32),
            remat_faithfulness="faithfulness" in self.remat,
        )
        ctx.component_means.update(self.psi_means(sites, ci_upper, ctx.progress))
        for plan in self.plans:
            outputs = []
            for sample in sources[plan]:
                row = []
                for i, fwd in enumerate(sample):
                    site_fn = masked_site_fn(
                        live_sites(plan, sites, i),
                        compute_VU,
                        ci_lower,
                        fwd,
                        plan.delta,
                        record,
                        acts,
                    )
                    row.append(self.masked_forward(target, compute_x, site_fn))
                outputs.append(row)
            ctx.recon_outputs[plan] = outputs
        for spec in self.adversaries:
            self._adversarial_forward(
                ctx,
                spec,
                target,
                compute_x,
                record,
                compute_VU,
                acts,
                sources[spec],
                adversary_sources,
            )
        return ctx

    def _adversarial_forward(
        self,
        ctx: StepContext,
        spec: AdversarySpec,
        target: Any,
        x: Array,
        record: CleanRecord,
        compute_VU: dict[str, tuple[Array, Array]],
        acts: dict[str, Array],
        drawn: dict[str, Any],
        persistent_sources: dict[str, Array] | None,
    ) -> None:
        """S6A: `spec.n_steps` sign ascents on the sources with every decomposition product
        frozen, then ONE masked forward at the final sources that carries the gradient. A
        fresh adversary's final sources are stop-gradient; a persistent one's pass its
        gradient straight through the warm-up to the state's sources (S6A.5)."""
        sites = tuple(ctx.VU)
        batch_shape = tuple(ctx.ci_lower[sites[0]].shape[:-1])
        dist = OUTPUT_DISTANCES[spec.distance]
        routed = drawn["routed"]
        sg = jax.lax.stop_gradient
        start = drawn["init"]
        if spec.persistent and persistent_sources is not None:
            start = persistent_sources
        frozen_VU, frozen_ci, frozen_acts = sg((compute_VU, ctx.ci_lower, acts))
        outputs, finals = [], {}
        for live in live_groups(spec, sites):

            def adv_loss(src: dict[str, Array], live: tuple[str, ...] = live) -> Array:
                fwd = adversary_forward(spec, src, routed, batch_shape)
                site_fn = masked_site_fn(
                    live, frozen_VU, frozen_ci, fwd, spec.delta, record, frozen_acts
                )
                return dist(at_least_float32(target(x, site_fn)), ctx.clean_output)

            own = {s: start[s] for s in live}
            with jax.named_scope("adversary_ascent"):
                final = sign_ascent(adv_loss, sg(own), spec.n_steps, spec.step_size)
            if spec.persistent:
                used = jax.tree.map(lambda a, b: a + sg(b - a), own, final)
            else:
                used = sg(final)
            fwd = adversary_forward(spec, used, routed, batch_shape)
            site_fn = masked_site_fn(live, compute_VU, ctx.ci_lower, fwd, spec.delta, record, acts)
            outputs.append(self.masked_forward(target, x, site_fn))
            finals.update(sg(final))
        ctx.adversarial_outputs[spec] = outputs
        ctx.adversary_sources[spec] = finals

    def clean_pass(
        self, target: Any, decomposition: Any, x: Array, compute_dtype: ComputeDtype = "float32"
    ) -> CleanPass:
        """Everything upstream of `context_from_ci`: the clean forward, x @ V once per site and
        the CI (shared by `context` and `global_component_means`)."""
        sites = decomposition.site_names
        compute_target = module_in_dtype(target, compute_dtype)
        compute_x = compute_cast(x, compute_dtype)  # a float batch; token ids stay as they are
        with jax.named_scope("clean_forward"):
            clean, record = jax.lax.stop_gradient(clean_forward(compute_target, compute_x, sites))
        clean = at_least_float32(clean)
        all_weights = target.site_weights()
        weights = {s: jax.lax.stop_gradient(all_weights[s]) for s in sites}

        VU = decomposition.all_VU()
        compute_VU = compute_cast(VU, compute_dtype)
        with jax.named_scope("inner_acts"):
            acts = inner_acts(record, compute_VU)
        with jax.named_scope("ci_function"):
            ci_lower, ci_upper = decomposition.causal_importances(
                at_least_float32(decomposition.ci_taps(record)), VU, at_least_float32(acts)
            )
        return CleanPass(
            compute_target, compute_x, clean, record, weights, VU, compute_VU, acts, ci_lower,
            ci_upper,
        )  # fmt: skip

    def psi_means(
        self, sites: tuple[str, ...], ci_upper: dict[str, Array], progress: Array
    ) -> dict[PsiSpec, dict[str, Float[Array, " C"]]]:
        """f_c of every distinct psi at every site: the per-component means over the batch."""
        out = {}
        for psi in self.psi_specs:
            with jax.named_scope("component_means"):
                out[psi] = {s: component_means(psi(ci_upper[s], progress)) for s in sites}
        return out

    def global_component_means(
        self,
        target: Any,
        decomposition: Any,
        x: Array,
        progress: Array,
        compute_dtype: ComputeDtype = "float32",
    ) -> dict[PsiSpec, dict[str, Float[Array, " C"]]]:
        """The component means of `x` alone (clean forward and CI, no masked forward), without
        gradient: a micro-batched step averages them over its micro-batches to get the global
        batch's f (S10.4)."""
        clean = self.clean_pass(target, decomposition, x, compute_dtype)
        means = self.psi_means(tuple(clean.VU), clean.ci_upper, jnp.asarray(progress, jnp.float32))
        return {psi: jax.lax.stop_gradient(by_site) for psi, by_site in means.items()}

    def context(
        self,
        target: Any,
        decomposition: Any,
        x: Array,
        sources: PlanSources,
        progress: Array,
        adversary_sources: dict[str, Array] | None = None,
        compute_dtype: ComputeDtype = "float32",
    ) -> StepContext:
        """Full fused pass from the batch: clean forward, x @ V once per site, CI, then
        `context_from_ci`.

        With `compute_dtype` "bfloat16" the target's forwards and the site products run on bf16
        copies of the target weights and of V, U, while the CI function, the masks, the
        distances and every loss read float32 (S15.6, S15.7); "float32" is today's graph."""
        c = self.clean_pass(target, decomposition, x, compute_dtype)
        return self.context_from_ci(
            c.compute_target,
            x,
            c.clean_output,
            c.record,
            c.weights,
            c.VU,
            c.ci_lower,
            c.ci_upper,
            sources,
            progress,
            c.acts,
            adversary_sources,
            c.compute_VU,
            c.compute_x,
        )

    def evaluate(self, ctx: StepContext) -> tuple[Array, dict[str, Array]]:
        """total = sum of every term's weighted value; metrics under stable keys."""
        total = jnp.zeros((), jnp.float32)
        metrics: dict[str, Array] = {}
        for term in self.terms:
            result = term(ctx)
            total = total + result.weighted
            metrics.update({f"train/loss/{k}": v for k, v in result.parts.items()})
            metrics.update(result.metrics)
        metrics["train/loss/total"] = total
        return total, metrics
