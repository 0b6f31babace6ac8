"""The trainable side of a decomposition: per-site V/U components plus the CI function.

Frozen target weights never live here; they are passed to every method so the jitted step
receives them as arguments (SPEC S0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from param_decomp.config.schema import Decomposition
from param_decomp.decomposition.ci_functions import PerComponentMLP, VectorMLP
from param_decomp.decomposition.ci_transformer import GlobalTransformerCI
from param_decomp.decomposition.components import component_acts
from param_decomp.decomposition.masked_forward import CleanRecord
from param_decomp.decomposition.sites import resolve_sites
from param_decomp.decomposition.squashing import lower_leaky_hard, upper_leaky_hard

Weights = dict[str, Float[Array, "d_in d_out"]]


class Components(nnx.Module):
    """V (d_in, C) and U (C, d_out) of one site, init std = 1/sqrt(fan_in) (linear gain)."""

    def __init__(self, d_in: int, d_out: int, C: int, scale: float, *, rngs: nnx.Rngs):
        self.V = nnx.Param(jax.random.normal(rngs.params(), (d_in, C)) * (scale / d_in**0.5))
        self.U = nnx.Param(jax.random.normal(rngs.params(), (C, d_out)) * (scale / C**0.5))


class DecompositionModel(nnx.Module):
    """Components of every decomposed site and their causal-importance function.

    `site_shapes` holds (d_in, d_out) of the target's sites in the target's order (all of them,
    or at least every decomposed one); `cfg.sites` picks the decomposed ones and their C (S1.4).
    """

    def __init__(
        self,
        cfg: Decomposition,
        site_shapes: dict[str, tuple[int, int]],
        *,
        rngs: nnx.Rngs,
        index_sites: tuple[str, ...] = (),
    ):
        site_C = resolve_sites(cfg, list(site_shapes))
        self.site_names = tuple(site_C)
        self.index_sites = tuple(s for s in index_sites if s in site_C)
        # what a site's CI reads (S5.6): its input, or for token-id sites its clean output
        ci_width = {
            s: site_shapes[s][1] if s in self.index_sites else site_shapes[s][0] for s in site_C
        }
        self.site_C_items = tuple(site_C.items())  # a tuple: static, part of the graphdef
        self.tied_sites = tuple(sorted(cfg.tied_sites.items()))
        self.ci_kind = cfg.ci_function.type
        self.leaky_alpha = cfg.leaky_alpha
        owned = [s for s in site_C if s not in cfg.tied_sites]
        self.components = nnx.Dict(
            {
                s.replace(".", "_"): Components(
                    *site_shapes[s], site_C[s], cfg.init_scale, rngs=rngs
                )
                for s in owned
            }
        )
        kind, hidden = cfg.ci_function.type, cfg.ci_function.hidden
        if kind == "per_component_mlp":
            self.ci_fns = nnx.Dict(
                {
                    s.replace(".", "_"): PerComponentMLP(c, hidden, rngs=rngs)
                    for s, c in site_C.items()
                }
            )
        elif kind == "per_site_mlp":
            self.ci_fns = nnx.Dict(
                {
                    s.replace(".", "_"): VectorMLP(ci_width[s], hidden, c, rngs=rngs)
                    for s, c in site_C.items()
                }
            )
        elif kind == "global_mlp":
            d_total = sum(ci_width.values())
            self.global_ci = VectorMLP(d_total, hidden, sum(site_C.values()), rngs=rngs)
        else:
            d_total = sum(ci_width.values())
            self.global_ci = GlobalTransformerCI(
                cfg.ci_function, d_total, sum(site_C.values()), rngs=rngs
            )

    @property
    def site_C(self) -> dict[str, int]:
        """{site: number of components}, in site order."""
        return dict(self.site_C_items)

    def ci_taps(self, record: CleanRecord) -> dict[str, Float[Array, "*b d"]]:
        """What each site's CI function reads (S5.6): the site's clean input, except for sites
        whose input is token ids (an embedding), which offer their clean output instead."""
        return {
            s: record.outputs[s] if s in self.index_sites else record.inputs[s]
            for s in self.site_names
        }

    def site_VU(self, site: str) -> tuple[Float[Array, "d_in C"], Float[Array, "C d_out"]]:
        """V, U of `site`; a tied site reuses its source's factors transposed (S1.3)."""
        source = dict(self.tied_sites).get(site)
        if source is not None:
            comp = self.components[source.replace(".", "_")]
            return comp.U[...].T, comp.V[...].T
        comp = self.components[site.replace(".", "_")]
        return comp.V[...], comp.U[...]

    def all_VU(self) -> dict[str, tuple[Array, Array]]:
        return {s: self.site_VU(s) for s in self.site_names}

    def ci_pre_activations(
        self,
        site_inputs: dict[str, Float[Array, "*b d_in"]],
        VU: dict[str, tuple[Array, Array]],
        acts: dict[str, Float[Array, "*b C"]] | None = None,
    ) -> dict[str, Float[Array, "*b C"]]:
        """One CI evaluation for every site (S5); squash afterwards. `acts` are the inner
        activations x @ V when the caller already has them (S9.4), else they are formed here."""
        kind = self.ci_kind
        if kind == "per_component_mlp":
            if acts is None:
                acts = {s: component_acts(site_inputs[s], VU[s][0]) for s in self.site_names}
            return {s: self.ci_fns[s.replace(".", "_")](acts[s]) for s in self.site_names}
        if kind == "per_site_mlp":
            return {s: self.ci_fns[s.replace(".", "_")](site_inputs[s]) for s in self.site_names}
        joint = jnp.concatenate([site_inputs[s] for s in self.site_names], axis=-1)
        out = self.global_ci(joint)
        pre, offset = {}, 0
        for s, c in self.site_C_items:
            pre[s] = out[..., offset : offset + c]
            offset += c
        return pre

    def causal_importances(
        self,
        site_inputs: dict[str, Array],
        VU: dict[str, tuple[Array, Array]],
        acts: dict[str, Array] | None = None,
    ) -> tuple[dict[str, Array], dict[str, Array]]:
        """(ci_lower, ci_upper): lower feeds the masks, upper feeds importance minimality (S3)."""
        pre = self.ci_pre_activations(site_inputs, VU, acts)
        alpha = self.leaky_alpha
        lower = {s: lower_leaky_hard(p, alpha) for s, p in pre.items()}
        upper = {s: upper_leaky_hard(p, alpha) for s, p in pre.items()}
        return lower, upper
