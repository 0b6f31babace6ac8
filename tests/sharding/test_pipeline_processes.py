"""Issue 9 acceptance 2: a 2-process run over gloo sees the disjoint union of the
single-process global batches, each process reading only its own rows (S12.5)."""

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from processes import free_port, run_together

from param_decomp.config.pretrain_schema import TextData
from param_decomp.data.pipeline import TextBatches
from param_decomp.data.token_store import prepare_tokens

WORKER = Path(__file__).with_name("pipeline_worker.py")
SEQ, BATCH, STEPS, SEED = 16, 8, 6, 11  # as in the worker


def test_two_processes_split_every_global_batch(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        counters = "".join(f"{i}.{j};" for j in range(15 + 4 * (i % 5)))
        (corpus / f"doc{i:02d}.txt").write_text(f"doc {i}: {counters}")
    cache = tmp_path / "cache"
    port = free_port()
    run_together(
        [
            [
                sys.executable,
                str(WORKER),
                str(port),
                str(p),
                "2",
                str(corpus),
                str(cache),
                str(tmp_path),
            ]
            for p in range(2)
        ]
    )
    assert len(list((cache / "tokens").iterdir())) == 1  # two builders, one cache entry
    got = [json.loads((tmp_path / f"process{p}.json").read_text()) for p in range(2)]
    store = prepare_tokens(TextData(corpus=str(corpus)), SEQ, cache)
    single = TextBatches(store.train, SEQ, BATCH, SEED)
    expected = [np.asarray(next(single)) for _ in range(STEPS)]
    weights = 1 + np.arange(BATCH * (SEQ + 1)).reshape(BATCH, SEQ + 1) % 7
    for mesh in ("data4", "data2_tensor2"):
        (a0, b0), (a1, b1) = got[0][mesh]["rows"], got[1][mesh]["rows"]
        assert (a0, b0, a1, b1) == (0, BATCH // 2, BATCH // 2, BATCH)  # disjoint, covering
        for step in range(STEPS):
            union = np.concatenate([got[0][mesh]["local"][step], got[1][mesh]["local"][step]])
            np.testing.assert_array_equal(union, expected[step])
            total = int(jnp.sum(jnp.asarray(expected[step]) * weights))
            assert got[0][mesh]["sums"][step] == got[1][mesh]["sums"][step] == total
