"""Batches for a decomposition run: training batches placed on the mesh, eval batches, probes.

Toy targets draw sparse features; LM targets draw windows of the pretraining corpus. Both
draw the GLOBAL batch as a pure function of (seed, step) inside jit with the batch sharding as
output, so each device (and process) computes only its own rows and the data never depends
on the layout (S12.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Sharding
from jaxtyping import Array

from param_decomp.config.pretrain_schema import PretrainConfig
from param_decomp.config.schema import SparseFeatureData
from param_decomp.data.sparse_features import one_feature_inputs, sample_sparse_features
from param_decomp.data.text import corpus_splits, sample_windows, val_windows
from param_decomp.data.tokenizers import TOKENIZER_CACHE


@dataclass
class SparseFeatureSource:
    data: SparseFeatureData
    n_features: int
    batch_size: int
    seed: int
    sharding: Sharding | None = None

    def __post_init__(self) -> None:
        key = jax.random.key(self.seed + 1)
        draw = lambda step: sample_sparse_features(  # noqa: E731
            jax.random.fold_in(key, step), self.batch_size, self.n_features, self.data
        )
        self._draw = jax.jit(draw, out_shardings=self.sharding)

    def train_batch(self, step: int) -> Array:
        return self._draw(step)

    def eval_batches(self, n: int, batch_size: int) -> list[Array]:
        key = jax.random.key(self.seed + 10_000)
        return [
            sample_sparse_features(
                jax.random.fold_in(key, i), batch_size, self.n_features, self.data
            )
            for i in range(n)
        ]

    def probe(self) -> Array | None:
        """Single-feature inputs: row i has only feature i on (the CI-vs-feature figure)."""
        return one_feature_inputs(self.n_features)


@dataclass
class TextSource:
    """Token windows of the target's pretraining corpus (train split for training)."""

    pretrain: PretrainConfig
    batch_size: int
    seed: int
    sharding: Sharding | None = None
    tokenizer_cache: Path = TOKENIZER_CACHE

    def __post_init__(self) -> None:
        text = self.pretrain.data
        splits = corpus_splits(text, self.pretrain.seq_len, self.tokenizer_cache)
        self._train, self._val = splits.train, splits.val
        self._train_device = jnp.asarray(self._train)
        draw = partial(
            sample_windows, batch_size=self.batch_size, seq_len=self.pretrain.seq_len - 1
        )
        self._draw = jax.jit(
            lambda toks, step: draw(toks, self.seed + 1, step), out_shardings=self.sharding
        )

    def train_batch(self, step: int) -> Array:
        return self._draw(self._train_device, step)

    def eval_batches(self, n: int, batch_size: int) -> list[Array]:
        windows = val_windows(self._val, self.pretrain.seq_len - 1, n * batch_size)
        return [
            jnp.asarray(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)
        ][:n]

    def probe(self) -> Array | None:
        """The first val window: the CI figure shows components against its tokens."""
        return jnp.asarray(np.asarray(self.eval_batches(1, 1)[0]))


BatchSource = SparseFeatureSource | TextSource
