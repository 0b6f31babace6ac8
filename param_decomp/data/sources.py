"""Batches for a decomposition run: training batches placed on the mesh, eval batches, probes.

Toy targets draw sparse features inside jit with the batch sharding as output; LM targets read
windows of the pretraining corpus through the grain pipeline, each process only its rows. In
both the GLOBAL batch is a pure function of (seed, step), so the data never depends on the
layout (S12.2, S12.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Sharding
from jaxtyping import Array

from param_decomp.config.schema import SparseFeatureData, TextData
from param_decomp.data.pipeline import TextBatches, fixed_windows
from param_decomp.data.sparse_features import one_feature_inputs, sample_sparse_features
from param_decomp.data.token_store import CACHE_ROOT, prepare_tokens
from param_decomp.text.tokenizers import Tokenizer

FIGURE_FEATURE_VALUE = 0.75


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
        """Single-feature inputs: row i has only feature i at 1 (alive counting, S14.1)."""
        return one_feature_inputs(self.n_features)

    def figure_probe(self) -> tuple[Array, str, str]:
        """(inputs, row label, title) of the CI figure: feature i alone at 0.75, inside the
        training range; at 1.0, its edge, TMS 5-2's linear2 CI shows off-diagonal entries."""
        value = FIGURE_FEATURE_VALUE
        inputs = one_feature_inputs(self.n_features, value)
        return (
            inputs,
            f"input: feature i alone, value {value}",
            (f"Causal importance on single-feature inputs (value {value})"),
        )


class TextSpec(Protocol):
    """What a text source reads: a pretrain config, or an hf target with its `data:` block."""

    @property
    def data(self) -> TextData: ...

    @property
    def seq_len(self) -> int: ...


@dataclass
class TextSource:
    """Windows of the target's pretraining corpus (or an hf target's `data:` text) through the
    grain pipeline (S12.5): the train split for training, fixed val windows for evaluation and
    the probe."""

    pretrain: TextSpec
    batch_size: int
    seed: int
    sharding: Sharding | None = None
    cache_root: Path = CACHE_ROOT

    def __post_init__(self) -> None:
        data, window = self.pretrain.data, self.pretrain.seq_len - 1
        self._store = prepare_tokens(data, window, self.cache_root)
        self._batches = TextBatches(
            self._store.train, window, self.batch_size, self.seed + 1, self.sharding, data.prefetch
        )

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer of the corpus cache: decodes val windows for the token view (S14.7)."""
        return self._store.tokenizer

    def train_batch(self, step: int) -> Array:
        if self._batches.position != step:  # a resumed or restarted run
            self._batches.set_state({**self._batches.get_state(), "next_index": step})
        return next(self._batches)

    def get_state(self) -> dict[str, Any]:
        """The pipeline position saved with a checkpoint (S12.6)."""
        return self._batches.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._batches.set_state(state)

    def eval_batches(self, n: int, batch_size: int) -> list[Array]:
        windows = fixed_windows(self._store.val, self.pretrain.seq_len - 1, n * batch_size)
        return [
            jnp.asarray(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)
        ][:n]

    def probe(self) -> Array | None:
        """The first val window: the CI figure shows components against its tokens."""
        return jnp.asarray(np.asarray(self.eval_batches(1, 1)[0]))

    def figure_probe(self) -> tuple[Array, str, str]:
        """(inputs, row label, title) of the CI figure: the tokens of one val sequence."""
        window = self.probe()
        assert window is not None
        return (
            window,
            "position in a val sequence (one row per token)",
            ("Causal importance per token of one val sequence"),
        )


BatchSource = SparseFeatureSource | TextSource
