"""The `ablate` job, `param-decomp ablate RUN_DIR`: what removing each component where it fires
does to the prediction, through the whole network, read from a finished harvest.

For each component, its first `contexts` reservoir samples (a uniform sample of its firing
tokens) and its first `contexts` top contexts are ablated one by one (`harvest/ablation.py`):
the harvest's window of that context is rebuilt from the run's corpus (the same windows the
harvest read: window ids by `data.pipeline.batch_ids` with the harvest's seed and batch size),
the component is masked off at the firing position in the full decomposed model, and the
next-token distribution there is compared with the target's own. The sums live on the host in
fixed-size arrays (`harvest/ablation_tables.py`); the batches of rows are placed over the run's
mesh like the harvest's (rows over the data axes). Process 0 writes the tables into the
harvest's folder (`ablation.json` last). A rerun replaces them; it does not resume.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow.parquet as pq
from flax import nnx

from param_decomp.config.loading import mesh_problems
from param_decomp.data.pipeline import batch_ids
from param_decomp.data.token_store import TokenFile
from param_decomp.harvest import store
from param_decomp.harvest.ablation import make_ablation_step
from param_decomp.harvest.ablation_tables import (
    AblationRows,
    AblationSums,
    ablation_table,
    ablation_tokens_table,
    select_rows,
)
from param_decomp.harvest.settings import AblationSettings
from param_decomp.jobs.harvest import host, open_run, token_store
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.train.run_dir import RunDirError
from param_decomp.train.run_loop import is_main_process


@dataclass(frozen=True)
class AblationResult:
    folder: Path
    meta: dict[str, Any]  # ablation.json: settings, rows, timing
    seconds: float  # the ablation batches (compilations included), not reading or writing


class HarvestWindows:
    """The windows a harvest read, by global sequence index (i * B + b of batch i): the harvest's
    window ids, read from the split's token file only for the rows asked for."""

    def __init__(self, split: TokenFile, window: int, batch: int, seed: int) -> None:
        self.split, self.window, self.batch = split, window, batch
        self.n_windows = split.n_windows(window - 1)
        self.ids = batch_ids(self.n_windows, batch, seed)

    def window_ids(self, sequence: np.ndarray) -> np.ndarray:
        return np.array([self.ids[int(s) // self.batch][int(s) % self.batch] for s in sequence])

    def rows(self, sequence: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the windows, the corpus token after each position: inside the window, or the one
        after its end; -1 past the end of the split)."""
        ids = self.window_ids(sequence)
        x = self.split.windows(ids, self.window - 1)
        inside = position + 1 < self.window
        after = np.full(len(ids), -1, np.int32)
        past = np.flatnonzero(~inside)
        if len(past):  # the corpus token after the window (window i starts at i * (window - 1))
            end = ids[past].astype(np.int64) * (self.window - 1) + self.window
            known = end < self.split.n_tokens
            corpus = np.memmap(self.split.path, self.split.dtype, mode="r")
            after[past[known]] = corpus[end[known]]
        nxt = np.where(
            inside, x[np.arange(len(ids)), np.minimum(position + 1, self.window - 1)], after
        )
        return x, nxt.astype(np.int32)


def run_ablation(
    run_dir: Path,
    settings: AblationSettings,
    step: int | None = None,
    runs_dir: Path | None = None,
    devices: list | None = None,
    show_progress: bool = True,
) -> AblationResult:
    """Ablate the harvested contexts of checkpoint `step` (default: the latest) of `run_dir`
    and write the tables beside that step's harvest."""
    problems = settings.problems()
    if problems:
        raise RunDirError("ablate settings: " + "; ".join(problems))
    run = open_run(run_dir, step, runs_dir)
    folder = store.step_dir(run.run_dir, run.step)
    if not (folder / store.SUMMARY).is_file():
        raise RunDirError(
            f"{folder} holds no finished harvest: run `param-decomp harvest {run.run_dir} "
            f"--step {run.step}` first"
        )
    harvested = json.loads((folder / store.SETTINGS).read_text())
    model = nnx.merge(run.graphdef, run.params)
    site_C = tuple(model.site_C.items())
    samples = [pq.read_table(folder / f"{name}.parquet") for name in ("reservoir", "top_contexts")]
    rows = select_rows(site_C, samples, settings.contexts)
    batch = settings.batch_size or harvested["batch_size"]
    mesh = build_mesh(run.cfg.mesh, devices)
    problems = mesh_problems(run.cfg.mesh, mesh.devices.size, (("batch_size", batch),), ())
    if problems:
        raise RunDirError("ablate on this mesh: " + "; ".join(m for _, m in problems))
    plan = PlacementPlan.for_config(mesh, run.cfg.mesh)
    windows = HarvestWindows(
        token_store(run).split(harvested["split"]),
        harvested["seq_len"],
        harvested["batch_size"],
        harvested["seed"],
    )
    params = jax.device_put(run.params, plan.decomposition_shardings(run.params))
    target_graphdef, target_state = nnx.split(run.target)
    target_state = jax.device_put(target_state, plan.target_shardings(target_state))
    vocab = int(run.target.n_features)
    sums = AblationSums(sum(c for _, c in site_C), vocab)
    started = time.perf_counter()
    for site, part in rows.site_slices(site_C).items():
        if part.stop == part.start:
            continue
        step_fn = make_ablation_step(
            site, run.graphdef, target_graphdef, harvested["compute_dtype"], plan.replicated()
        )
        for lo in range(part.start, part.stop, batch):
            _run_batch(step_fn, params, target_state, plan, windows, rows, sums, lo,
                       min(lo + batch, part.stop), batch)  # fmt: skip
        if show_progress and is_main_process():
            done, rate = part.stop, part.stop / max(time.perf_counter() - started, 1e-9)
            print(f"ablate: {site} done ({done}/{len(rows)} ablations, {rate:.1f}/s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    seconds = time.perf_counter() - started
    meta = settings.as_dict() | {
        "batch_size": batch,
        "step": run.step,
        "ablations": len(rows),
        "seconds": seconds,
        "devices": int(mesh.devices.size),
    }
    if is_main_process():
        vocab_out = pq.read_table(folder / "vocab.parquet").num_rows
        tables = {
            "ablation": ablation_table(site_C, sums),
            "ablation_tokens": ablation_tokens_table(
                site_C, sums, settings.top_tokens, min(vocab, vocab_out)
            ),
        }
        store.write_ablation(folder, tables, meta)
    return AblationResult(folder, meta, seconds)


def _run_batch(
    step_fn: Any,
    params: Any,
    target_state: Any,
    plan: PlacementPlan,
    windows: HarvestWindows,
    rows: AblationRows,
    sums: AblationSums,
    lo: int,
    hi: int,
    batch: int,
) -> None:
    """Rows lo .. hi - 1 as one batch of `batch` (the last one padded by repeating its final row,
    whose results are dropped), and their effects added to `sums`."""
    take = np.minimum(np.arange(lo, lo + batch), hi - 1)
    x, nxt = windows.rows(rows.sequence[take], rows.position[take])

    def put(a: np.ndarray) -> jax.Array:
        sharding = plan.batch(a.ndim)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    out = step_fn(params, target_state, put(x), put(rows.component[take]),
                  put(rows.position[take]), put(nxt))  # fmt: skip
    dlogp, kl, delta = (np.asarray(a)[: hi - lo] for a in host(out))
    sums.add(rows.g[lo:hi], rows.sample[lo:hi], nxt[: hi - lo] >= 0, dlogp, kl, delta)


def report(result: AblationResult) -> str:
    """The printed summary: ablations run, their rate, and where the tables went."""
    n, seconds = result.meta["ablations"], result.seconds
    return (
        f"ablated {n} (component, context) pairs of step {result.meta['step']} in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):.1f}/s, compilation included)\nwrote "
        f"{result.folder / 'ablation.parquet'} and ablation_tokens.parquet"
    )
