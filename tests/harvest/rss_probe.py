"""Harvests RUN_DIR once in a fresh process and prints, as JSON, the process's peak RSS at the
end, its current RSS after the first tenth of the batches and after the last one, and the tokens
and seconds of the pass.

Usage: python rss_probe.py RUN_DIR BATCH_SIZE TOKENS
"""

import json
import os
import resource
import sys
from pathlib import Path

PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_MIB


run_dir, batch, tokens = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

from param_decomp.harvest.settings import HarvestSettings  # noqa: E402
from param_decomp.jobs.harvest import run_harvest  # noqa: E402

settings = HarvestSettings(tokens=tokens, batch_size=batch)
n_batches = -(-tokens // (batch * 16))
samples: dict[str, float] = {}


def sample(i: int) -> None:
    if i == max(n_batches // 10, 1) - 1:
        samples["early_mib"] = current_mib()
    if i == n_batches - 1:
        samples["last_mib"] = current_mib()


result = run_harvest(run_dir, settings, show_progress=False, on_batch=sample)
print(
    json.dumps(
        {
            "peak_mib": peak_mib(),
            **samples,
            "tokens": result.summary["tokens"],
            "seconds": result.seconds,
        }
    )
)
