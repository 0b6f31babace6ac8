"""The GPT-2-style target: pretraining learns, the tied head, and a decomposition step on its
sites (S9.4 shared products through LayerNorm and biases)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import nnx

from param_decomp.config.pretrain_schema import load_pretrain_config
from param_decomp.config.schema import Decomposition, GPT2Model
from param_decomp.decomposition.masked_forward import clean_forward
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.jobs.pretrain import pretrain
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.importance import ImportanceMinimality
from param_decomp.losses.reconstruction import StochasticRecon, StochasticReconLayerwise
from param_decomp.objective import Objective
from param_decomp.targets.gpt2 import GPT2, SITE_KINDS
from param_decomp.train.step import init_state, make_train_step

CFG = {"type": "gpt2", "vocab_size": 32, "d_model": 16, "n_heads": 2, "d_mlp": 32, "seq_len": 8}


def test_pretrain_gpt2_learns(tmp_path: Path) -> None:
    raw = {
        "run_name": "gpt2_test",
        "model": {**CFG, "vocab_size": 256, "d_model": 32, "d_mlp": 64, "seq_len": 32},
        "data": {"max_val_windows": 32},
        "train": {
            "steps": 120,
            "batch_size": 16,
            "optimizer": {"lr": 1e-2, "grad_clip_norm": 1.0},
            "log_every": 60,
            "eval_every": 60,
        },
    }
    path = tmp_path / "gpt2.yaml"
    path.write_text(yaml.safe_dump(raw))
    pretrain(load_pretrain_config(path), tmp_path, log=False)
    lines = (tmp_path / "targets" / "gpt2_test" / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if "val/loss" in r]
    assert evals[0]["val/loss"] == pytest.approx(math.log(256), abs=0.5)
    assert evals[-1]["val/loss"] < evals[0]["val/loss"] - 1.5


def test_tied_head_reads_the_embedding() -> None:
    tied = GPT2(GPT2Model(**CFG), rngs=nnx.Rngs(0))
    untied = GPT2(GPT2Model(**CFG, tied_head=False), rngs=nnx.Rngs(0))
    assert not hasattr(tied, "unembed") and untied.unembed[...].shape == (16, 32)
    tokens = jnp.arange(16).reshape(2, 8) % 32
    captured: dict = {}

    def site_fn(name: str, x: jax.Array, W: jax.Array) -> jax.Array:
        captured[name] = (x, W)
        return W[x] if jnp.issubdtype(x.dtype, jnp.integer) else x @ W  # embed: token ids

    logits = tied(tokens, site_fn)
    # every linear matrix is a site (S1.4); the tied head is the embedding transposed
    assert set(captured) == {"embed", "unembed"} | {f"layers.0.{k}" for k in SITE_KINDS}
    np.testing.assert_array_equal(captured["unembed"][1], tied.embed[...].T)
    # the same weights with an explicit head equal to embed^T give the same logits
    untied.unembed.value = tied.embed[...].T
    np.testing.assert_allclose(untied(tokens), logits, rtol=1e-5, atol=1e-6)
    untied.unembed.value = tied.embed[...].T * 2.0
    assert not np.allclose(untied(tokens), logits, atol=1e-3)


def test_decomposition_step_on_gpt2_sites() -> None:
    target = GPT2(GPT2Model(**CFG, n_layers=2), rngs=nnx.Rngs(0))
    sites = ["layers.0.mlp.fc", "layers.0.mlp.proj", "layers.1.attn.q", "layers.1.mlp.fc"]
    weights = target.site_weights()
    cfg = Decomposition(C=6, sites=sites, ci_function={"type": "per_site_mlp", "hidden": [8]})
    model = DecompositionModel(cfg, {s: tuple(weights[s].shape) for s in sites}, rngs=nnx.Rngs(1))
    terms = (
        Faithfulness(coeff=1.0),
        ImportanceMinimality(coeff=1e-3, pnorm=2.0),
        StochasticRecon(coeff=1.0, distance="kl"),
        StochasticReconLayerwise(coeff=1.0, distance="kl"),
    )
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    optimizer = optax.adamw(1e-2)
    step = jax.jit(
        make_train_step(Objective.from_terms(terms), graphdef, target_graphdef, optimizer, 5)
    )
    state = init_state(params, optimizer, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(2), (4, 8), 0, 32)
    losses = []
    for _ in range(3):
        state, metrics = step(state, target_state, tokens)
        losses.append(float(metrics["train/loss/total"]))
    assert all(math.isfinite(v) for v in losses)
    out, record = clean_forward(target, tokens, tuple(sites))
    np.testing.assert_allclose(out, target(tokens), rtol=1e-6)
    layer_sites = {f"layers.{i}.{k}" for i in range(2) for k in SITE_KINDS}
    assert set(record.outputs) == {"embed", "unembed"} | layer_sites
