"""The grain pipeline (S12.5): deterministic global batches, every window once per epoch,
reshuffled per (seed, epoch), restorable position, placement on a mesh."""

from __future__ import annotations

from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from param_decomp.config.pretrain_schema import TextData
from param_decomp.data.pipeline import TextBatches, fixed_windows, process_rows
from param_decomp.data.token_store import TokenStore, prepare_tokens
from param_decomp.train.checkpoint import RunCheckpoints, restore_data_state

SEQ = 16
BATCH = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    root = tmp_path_factory.mktemp("pipeline")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):
        # "doc i:" then counters "i.j;": every window holds a whole counter, so is unique
        counters = "".join(f"{i}.{j};" for j in range(20 + 9 * (i % 7)))
        (corpus / f"doc{i:02d}.txt").write_text(f"doc {i}: {counters} hello.")
    return prepare_tokens(TextData(corpus=str(corpus)), SEQ, root / "cache")


def _take(batches: TextBatches, n: int) -> list[np.ndarray]:
    return [np.asarray(next(batches)) for _ in range(n)]


def test_windows_are_the_packed_token_stream(store: TokenStore) -> None:
    """Documents are packed back to back, each followed by the EOD token; window i is tokens
    [i * SEQ, i * SEQ + SEQ + 1), so consecutive windows share one token."""
    tokens = np.fromfile(store.train.path, store.train.dtype).astype(np.int32)
    n_docs = store.meta["splits"]["train"]["documents"]
    assert int(np.sum(tokens == store.tokenizer.eod_id)) == n_docs and tokens[-1] == 0
    windows = store.train.windows(np.arange(store.train.n_windows(SEQ)), SEQ)
    chex.assert_shape(windows, (store.train.n_windows(SEQ), SEQ + 1))
    np.testing.assert_array_equal(windows[:, :-1].ravel(), tokens[: windows.shape[0] * SEQ])
    np.testing.assert_array_equal(windows[:-1, -1], windows[1:, 0])
    text = store.tokenizer.decode(tokens[: np.flatnonzero(tokens == 0)[0]])
    assert text.startswith("doc ") and text.endswith("; hello.")


def test_two_runs_give_identical_batches_and_seeds_differ(store: TokenStore) -> None:
    a = _take(TextBatches(store.train, SEQ, BATCH, seed=3), 12)
    b = _take(TextBatches(store.train, SEQ, BATCH, seed=3), 12)
    c = _take(TextBatches(store.train, SEQ, BATCH, seed=4), 12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == np.int32 and x.shape == (BATCH, SEQ + 1)
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_every_window_once_per_epoch_in_a_new_order(store: TokenStore) -> None:
    n = store.train.n_windows(SEQ)
    all_windows = store.train.windows(np.arange(n), SEQ)
    index = {w.tobytes(): i for i, w in enumerate(all_windows)}
    assert len(index) == n  # windows are distinct, so rows identify them
    epochs = 3
    batches = TextBatches(store.train, SEQ, BATCH, seed=0)
    rows = np.concatenate(_take(batches, -(-epochs * n // BATCH)))[: epochs * n]
    order = np.asarray([index[r.tobytes()] for r in rows])
    for e in range(epochs):
        epoch = order[e * n : (e + 1) * n]
        assert sorted(epoch.tolist()) == list(range(n)), f"epoch {e} is not a permutation"
    assert not np.array_equal(order[:n], order[n : 2 * n])  # reshuffled by (seed, epoch)
    assert not np.array_equal(order[:n], np.arange(n))


def test_restoring_a_saved_state_reproduces_the_next_10_batches(
    store: TokenStore, tmp_path: Path
) -> None:
    """S12.6, through a real orbax checkpoint, as a run saves and resumes it."""
    batches = TextBatches(store.train, SEQ, BATCH, seed=5)
    _take(batches, 7)
    checkpoints = RunCheckpoints(tmp_path / "ckpt")
    checkpoints.save(7, {"w": np.zeros(3)}, batches.get_state(), {"run_name": "x"}, wait=True)
    checkpoints.close()
    expected = _take(batches, 10)
    state = restore_data_state(tmp_path / "ckpt")
    assert state is not None and state["next_index"] == 7
    resumed = TextBatches(store.train, SEQ, BATCH, seed=5)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 10), strict=True):
        np.testing.assert_array_equal(x, y)
    # a state saved for another seed or batch shape is refused, not silently used
    with pytest.raises(ValueError, match=r"another pipeline \(seed: saved 5, now 6\)"):
        TextBatches(store.train, SEQ, BATCH, seed=6).set_state(state)
    with pytest.raises(ValueError, match="global_batch"):
        TextBatches(store.train, SEQ, BATCH * 2, seed=5).set_state(state)


def test_global_batch_on_a_four_device_mesh(store: TokenStore) -> None:
    mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "tensor"))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    placed = TextBatches(store.train, SEQ, BATCH, seed=1, sharding=sharding)
    plain = TextBatches(store.train, SEQ, BATCH, seed=1)
    for _ in range(3):
        x, y = next(placed), next(plain)
        assert x.sharding == sharding
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert process_rows(sharding, (BATCH, SEQ + 1)) == slice(0, BATCH)


def test_val_windows_are_fixed_and_in_order(store: TokenStore) -> None:
    a = fixed_windows(store.val, SEQ, 5)
    np.testing.assert_array_equal(a, fixed_windows(store.val, SEQ, 5))
    n = store.val.n_windows(SEQ)
    assert fixed_windows(store.val, SEQ, 10_000).shape == (n, SEQ + 1)
    np.testing.assert_array_equal(a[:-1, -1], a[1:, 0])
