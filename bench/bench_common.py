"""What every bench shares: paths, the decomposition session a bench times, the fields every
result JSON carries, and one timing rule (best of n after a warm-up), so that the benches in
this folder measure alike."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax

import param_decomp  # noqa: F401  (its XLA:CPU defaults must precede jax's backend start)
from param_decomp.study.provenance import cpu_model

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
RUNS_DIR = Path("runs")  # relative to the repo root, like the CLI: target caches are shared


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _host_cpu() -> str:
    return cpu_model()


def common_fields(name: str) -> dict[str, Any]:
    """Where and when a result was measured: a timing means little without the machine and load."""
    return {
        "name": name,
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "n_devices": jax.device_count(),
        "host_cpu": _host_cpu(),
        "host_cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "load_avg_1min": os.getloadavg()[0],  # other work on the machine skews every timing
        "timestamp": _now(),
    }


def write_result(result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """One JSON per bench, `<name>.json`, so a partial run (`--only`) keeps the others."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['name']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def load_config(path: str, **train_updates: Any) -> Any:
    """A decomposition config without its faithfulness warm-up, which does not change the cost
    of a step."""
    from param_decomp.config import schema
    from param_decomp.runconfig.decompose import load_decompose_config

    cfg = load_decompose_config(path)
    train = cfg.train.model_copy(
        update={"faithfulness_warmup": schema.FaithfulnessWarmup(steps=0), **train_updates}
    )
    return cfg.model_copy(update={"train": train})


def batch_sampler(session: Any) -> Any:
    """step -> global batch, as the training loop draws it."""
    source = getattr(session, "source", None)
    return source.train_batch if source is not None else session.sample


def open_session(cfg: Any, config_path: str) -> Any:
    """The session `decompose` would train, its target trained and cached under runs/ if missing."""
    from param_decomp.jobs.decompose import build_session

    return build_session(cfg, config_path, RUNS_DIR, show_progress=False)


def best_seconds(f: Any, *args: Any, reps: int) -> float:
    """Best wall time of `reps` calls of an already-jitted f(*args), after one warm-up call."""
    jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def fmt(value: Any, spec: str) -> str:
    """A table cell: '-' where the bench did not measure the value."""
    return "-" if value is None else format(value, spec)
