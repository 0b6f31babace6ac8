"""A one-layer micro Llama (vocab 64, so it compiles fast) with a decomposition of some of its
sites and a loss set: the shared problem of the step-level tests in this folder."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from param_decomp.config.schema import Decomposition, LlamaModel
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.losses.base import LossTerm
from param_decomp.objective import Objective
from param_decomp.targets.llama import Llama


def tiny_llama_problem(
    sites: tuple[str, ...], terms: tuple[LossTerm, ...], batch: int, remat: tuple[str, ...] = ()
) -> tuple[Any, ...]:
    """(objective, graphdef, params, target_graphdef, target_state, tokens) of C 8 per site, a
    global MLP CI function and `batch` random windows of 16 tokens."""
    target = Llama(
        LlamaModel(
            type="llama", vocab_size=64, d_model=16, n_heads=2, d_mlp=32, n_layers=1, seq_len=16
        ),
        rngs=nnx.Rngs(0),
    )
    weights = target.site_weights()
    cfg = Decomposition(C=8, sites=list(sites), ci_function={"type": "global_mlp", "hidden": [16]})
    shapes = {s: tuple(weights[s].shape) for s in sites}
    model = DecompositionModel(cfg, shapes, index_sites=Llama.INDEX_SITES, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    tokens = jax.random.randint(jax.random.key(2), (batch, 16), 0, 64)
    objective = Objective.from_terms(terms, remat)
    return objective, graphdef, params, target_graphdef, target_state, tokens
