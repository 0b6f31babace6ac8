"""Streams a corpus through the token store and the pipeline in a fresh process, and prints
its memory as JSON: peak RSS after the imports and backend start, after tokenizing, after
reading batches.

Usage: python streaming_probe.py CORPUS CACHE SEQ BATCH N_BATCHES
"""

import json
import resource
import sys


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


corpus, cache, seq, batch, n_batches = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])

import jax.numpy as jnp  # noqa: E402

from param_decomp.config.pretrain_schema import TextData  # noqa: E402
from param_decomp.data.pipeline import TextBatches  # noqa: E402
from param_decomp.data.token_store import prepare_tokens  # noqa: E402

int(jnp.zeros(3).sum())  # start the backend before the baseline
after_imports = peak_mib()
store = prepare_tokens(TextData(corpus=corpus), seq, cache)
after_tokenizing = peak_mib()
batches = TextBatches(store.train, seq, batch, seed=0)
checksum = 0
for _ in range(n_batches):
    checksum += int(next(batches).sum())
print(
    json.dumps(
        {
            "after_imports_mib": after_imports,
            "after_tokenizing_mib": after_tokenizing,
            "after_batches_mib": peak_mib(),
            "train_tokens": store.train.n_tokens,
            "checksum": checksum,
        }
    )
)
