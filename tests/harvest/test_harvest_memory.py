"""A harvest's memory does not grow with the tokens it reads: every statistic lives in
fixed-size arrays (heaps, reservoirs, count matrices), so a harvest of 10^6 tokens must not
reach a peak RSS 64 MiB above a harvest of 10^5 (each in a fresh process, whose peak is its
own). Within the long pass, the resident memory after its last batch must also stay within 64
MiB of what it was after its first tenth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from processes import xla_flags

pytestmark = pytest.mark.runs_long(seconds=40)

PROBE = Path(__file__).with_name("rss_probe.py")
BATCH = 512  # windows of 16 tokens: 8192 tokens per batch
GROWTH_LIMIT_MIB = 64


def _probe(run_dir: Path, tokens: int) -> dict:
    # one device; two malloc arenas: glibc's per-thread arenas otherwise add tens of MiB of
    # run-to-run noise to the peak, unrelated to the tokens
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), MALLOC_ARENA_MAX="2")
    args = [sys.executable, str(PROBE), str(run_dir), str(BATCH), str(tokens)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_rss_grows_less_than_64_mib_from_1e5_to_1e6_tokens(harvest_run: Path) -> None:
    small = _probe(harvest_run, 100_000)
    large = _probe(harvest_run, 1_000_000)
    assert small["tokens"] >= 100_000 and large["tokens"] >= 1_000_000
    growth = large["peak_mib"] - small["peak_mib"]
    in_pass = large["last_mib"] - large["early_mib"]
    print(
        f"peak RSS {small['peak_mib']:.0f} MiB for {small['tokens']} tokens, "
        f"{large['peak_mib']:.0f} MiB for {large['tokens']} (growth {growth:.1f} MiB); "
        f"within the long pass {in_pass:+.1f} MiB; {large['tokens'] / large['seconds']:.0f} "
        "tokens/s"
    )
    assert growth < GROWTH_LIMIT_MIB
    assert in_pass < GROWTH_LIMIT_MIB
