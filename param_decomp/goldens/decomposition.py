"""Golden families for the decomposition primitives: squashings, decomposed linear, faithfulness."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from param_decomp.decomposition.components import decomposed_linear, stochastic_mask
from param_decomp.decomposition.squashing import SQUASHINGS
from param_decomp.goldens.registry import Case, Comparison, as_array, compare_tree, register_family
from param_decomp.losses.faithfulness import faithfulness_loss


def f32(x: object) -> jax.Array:
    return jnp.asarray(as_array(x), jnp.float32)


@register_family("squashings")
def squashings(case: Case) -> list[Comparison]:
    """Evaluated in float64: the cases probe x = 1 + 1e-9, which float32 rounds to exactly 1."""
    with jax.enable_x64(True):
        x = jnp.asarray(as_array(case["inputs"]["x"]), jnp.float64)
        g = jnp.asarray(as_array(case["inputs"]["grad_out"]), jnp.float64)
        alpha = float(case["inputs"]["alpha"])
        got = {}
        for name in case["expected"]:
            fn = SQUASHINGS[name]
            out, vjp = jax.vjp(lambda v, fn=fn: fn(v, alpha), x)
            got[name] = {"forward": np.asarray(out), "grad_in": np.asarray(vjp(g)[0])}
    return compare_tree("", got, case["expected"])


@register_family("decomposed_linear")
def decomposed_linear_family(case: Case) -> list[Comparison]:
    i = {k: f32(v) for k, v in case["inputs"].items()}
    W = i["W_out_in"].T
    mask = stochastic_mask(i["ci"], i["source"])
    got = {
        "mask": mask,
        "out_with_delta": decomposed_linear(i["x"], i["V"], i["U"], mask, W, i["delta_source"]),
        "out_without_delta": decomposed_linear(i["x"], i["V"], i["U"], mask),
    }
    return compare_tree("", got, case["expected"])


@register_family("faithfulness")
def faithfulness_family(case: Case) -> list[Comparison]:
    sites = case["inputs"]["sites"]
    weights = {s: f32(v["W_out_in"]).T for s, v in sites.items()}
    VU = {s: (f32(v["V"]), f32(v["U"])) for s, v in sites.items()}
    loss, grads = jax.value_and_grad(lambda vu: faithfulness_loss(weights, vu))(VU)
    got = {"loss": loss, "grad": {s: {"V": g[0], "U": g[1]} for s, g in grads.items()}}
    return compare_tree("", got, case["expected"])
