"""The grain pipeline that feeds LM pretraining and LM decomposition (S12.5).

    window ids -> shuffle by (seed, epoch) -> repeat -> global batches of ids
      -> this process's rows -> read those windows from the token file -> prefetch
      -> one global jax.Array via make_array_from_process_local_data

The global batch of step s is a pure function of (seed, s): the same on 1 or N processes and
on any mesh. Each process reads from disk only the rows its devices hold, and the iterator's
whole state is the index of the next batch, which goes into the run's checkpoint, so a
restored run sees exactly the batches it would have seen. Memory is bounded by the prefetch
buffer (batches in flight), not by the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Sharding
from jaxtyping import Array, Int

from param_decomp.data.token_store import TokenFile


def shuffle_seed(seed: int) -> int:
    """A well-mixed 32-bit seed; grain folds in the epoch number (seed + epoch), so a plain
    `seed` would make run seed s's epoch 1 equal run seed s + 1's epoch 0."""
    return int(np.random.SeedSequence([seed, 0x70617373]).generate_state(1)[0])


def process_rows(sharding: Sharding | None, global_shape: tuple[int, ...]) -> slice:
    """The contiguous rows of a global batch that this process's devices hold."""
    if sharding is None:
        return slice(0, global_shape[0])
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(global_shape[0])
        starts.append(start)
        stops.append(stop)
    rows = slice(min(starts), max(stops))
    held = sum(s1 - s0 for s0, s1 in {(a, b) for a, b in zip(starts, stops, strict=True)})
    if held < rows.stop - rows.start:
        raise ValueError(f"this process's rows of {global_shape} are not contiguous")
    return rows


def batch_ids(n_windows: int, global_batch: int, seed: int) -> grain.MapDataset:
    """Global batches of window ids: every window once per epoch, in an order fixed by
    (seed, epoch); batches run across epoch ends; endless."""
    if n_windows < 1:
        raise ValueError("no windows to draw from")
    return (
        grain.MapDataset.range(n_windows)
        .shuffle(seed=shuffle_seed(seed))
        .repeat()
        .batch(global_batch, drop_remainder=True)
    )


def to_global(
    local: Int[np.ndarray, "rows s"], sharding: Sharding | None, global_shape: tuple[int, ...]
) -> Int[Array, "b s"]:
    """One global array from each process's rows (a plain device array without a mesh)."""
    if sharding is None:
        return jnp.asarray(local)
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


@dataclass
class TextBatches:
    """Endless training batches of `global_batch` windows of seq_len + 1 tokens.

    `next(batches)` is the global batch of the next step, placed with `sharding`;
    `get_state()`/`set_state()` are the checkpointed position.
    """

    tokens: TokenFile
    seq_len: int
    global_batch: int
    seed: int
    sharding: Sharding | None = None
    prefetch: int = 4
    read_threads: int = 2
    _iterator: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        shape = (self.global_batch, self.seq_len + 1)
        self.rows = process_rows(self.sharding, shape)
        ids = batch_ids(self.tokens.n_windows(self.seq_len), self.global_batch, self.seed)
        rows, tokens, seq_len = self.rows, self.tokens, self.seq_len
        local = ids.map(lambda batch: tokens.windows(batch[rows], seq_len))
        options = grain.ReadOptions(
            num_threads=self.read_threads, prefetch_buffer_size=self.prefetch
        )
        self._iterator = iter(local.to_iter_dataset(options))

    @property
    def global_shape(self) -> tuple[int, int]:
        return (self.global_batch, self.seq_len + 1)

    def __iter__(self) -> Iterator[Int[Array, "b s"]]:
        return self

    def __next__(self) -> Int[Array, "b s"]:
        return to_global(next(self._iterator), self.sharding, self.global_shape)

    @property
    def position(self) -> int:
        """Index of the batch `next` returns: the step it feeds."""
        return int(self._iterator.get_state()["next_index"])

    def get_state(self) -> dict[str, Any]:
        return {
            "next_index": self.position,
            "seed": self.seed,
            "global_batch": self.global_batch,
            "seq_len": self.seq_len,
            "n_windows": self.tokens.n_windows(self.seq_len),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; a state from another corpus, seed or batch shape
        would silently give other batches, so it is refused."""
        mine = self.get_state()
        differing = [k for k in mine if k != "next_index" and state.get(k) != mine[k]]
        if differing:
            shown = ", ".join(f"{k}: saved {state.get(k)!r}, now {mine[k]!r}" for k in differing)
            raise ValueError(f"the saved data-iterator state is for another pipeline ({shown})")
        self._iterator.set_state({"next_index": int(state["next_index"])})


def fixed_windows(tokens: TokenFile, seq_len: int, max_windows: int) -> Int[np.ndarray, "n s"]:
    """The first `max_windows` windows in order (val): the same every evaluation and run."""
    n = min(tokens.n_windows(seq_len), max_windows)
    return tokens.windows(np.arange(n), seq_len)
