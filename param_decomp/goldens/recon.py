"""Golden family `recon`: output distances (KL, MSE) and their gradients.

Keys are `<distance>` for the value and `grad_<distance>_<arg>` for the gradient w.r.t. `arg`
(`masked` or `clean`), where `<distance>` is a key of OUTPUT_DISTANCES. Evaluated in float32.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from param_decomp.goldens.registry import Case, Comparison, compare_tree, register_family
from param_decomp.losses.distances import OUTPUT_DISTANCES

_GRAD = re.compile(r"grad_(?P<dist>.+)_(?P<arg>masked|clean)")
_ARGNUM = {"masked": 0, "clean": 1}


@register_family("recon")
def evaluate_recon(case: Case) -> list[Comparison]:
    """Compute each expected distance value / gradient for one case."""
    inputs = case["inputs"]
    masked = jnp.asarray(np.asarray(inputs["masked_logits"]), dtype=jnp.float32)
    clean = jnp.asarray(np.asarray(inputs["clean_logits"]), dtype=jnp.float32)

    comparisons: list[Comparison] = []
    for key, want in case["expected"].items():
        if key in OUTPUT_DISTANCES:
            got = OUTPUT_DISTANCES[key](masked, clean)
        elif (m := _GRAD.fullmatch(key)) and m["dist"] in OUTPUT_DISTANCES:
            got = jax.grad(OUTPUT_DISTANCES[m["dist"]], argnums=_ARGNUM[m["arg"]])(masked, clean)
        else:
            raise ValueError(f"recon: unknown expected key {key!r}")
        comparisons.extend(compare_tree(key, got, want))
    return comparisons
