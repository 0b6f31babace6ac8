"""The `harvest` job, `param-decomp harvest RUN_DIR`: one streaming pass of a decomposition
checkpoint over N tokens of its run's own corpus, recording what every component does.

The run's config, target and decomposition are reopened as `param-decomp eval` does (never
training anything); the tokens come from the run's corpus cache through the grain pipeline
(`data/pipeline.TextBatches`) on the chosen split, shuffled by the harvest seed; each batch is
placed over the run's mesh (batch over the data axes) and goes through one jitted program
(`harvest/accumulate.py`). Every `save_every` batches the state is saved, so `--resume`
continues a killed harvest and ends with the same tables as a straight one. SIGTERM/SIGINT save
and stop (exit code 75, like a run). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from param_decomp.config.loading import mesh_problems
from param_decomp.config.pretrain_schema import PretrainConfig
from param_decomp.config.schema import DecomposeConfig
from param_decomp.config.target_kinds import refuse
from param_decomp.data.pipeline import TextBatches
from param_decomp.data.token_store import TokenStore, prepare_tokens
from param_decomp.harvest import store
from param_decomp.harvest.accumulate import (
    MAX_TOKENS,
    HarvestSpec,
    init_state,
    make_harvest_step,
)
from param_decomp.harvest.results import results
from param_decomp.harvest.settings import HarvestSettings
from param_decomp.jobs.evaluate import open_checkpoint
from param_decomp.objective import Objective
from param_decomp.runconfig.target_config import target_kind
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.hf.config_map import HFTargetSpec
from param_decomp.train.run_dir import RunDirError
from param_decomp.train.run_loop import STOP, Preempted, is_main_process

SAVE_EVERY = 200  # batches between progress saves


@dataclass
class OpenRun:
    """A decomposition checkpoint reopened for reading: config, target, decomposition."""

    run_dir: Path
    runs_dir: Path
    step: int
    cfg: DecomposeConfig
    target_cfg: PretrainConfig | HFTargetSpec
    target: nnx.Module
    graphdef: nnx.GraphDef
    params: nnx.State


def open_run(run_dir: Path, step: int | None = None, runs_dir: Path | None = None) -> OpenRun:
    """Checkpoint `step` (default: the latest) of an LM decomposition run, with its cached
    target (never trained here)."""
    run_dir = Path(run_dir)
    opened = open_checkpoint(run_dir, step, runs_dir)
    refuse(target_kind(opened.target_cfg), "harvest", run_dir, key="target")
    return OpenRun(
        run_dir,
        opened.runs_dir,
        opened.step,
        opened.cfg,
        opened.target_cfg,
        opened.target,
        opened.graphdef,
        opened.params,
    )


def token_store(run: OpenRun) -> TokenStore:
    """The run's tokenized corpus (the cache under the runs folder, built if missing)."""
    return prepare_tokens(run.target_cfg.data, run.target_cfg.seq_len - 1, run.runs_dir)


def harvest_windows(
    run: OpenRun, settings: dict[str, Any], tokens: TokenStore, sharding: Any = None
) -> TextBatches:
    """The harvest's batches: windows of the split, shuffled by the harvest seed, batch i the
    same on any mesh and process count (what the tests read back to check the tables)."""
    return TextBatches(
        tokens.split(settings["split"]),
        run.target_cfg.seq_len - 1,
        settings["batch_size"],
        settings["seed"],
        sharding,
        run.target_cfg.data.prefetch,
    )


def resolved_settings(run: OpenRun, settings: HarvestSettings, tokens: TokenStore) -> dict:
    """settings.json: the options with the run's defaults filled in, and what else decides the
    tables (step, threshold, corpus, tokenizer, sequence length, compute dtype, batches)."""
    problems = settings.problems()
    if problems:
        raise RunDirError("harvest settings: " + "; ".join(problems))
    batch = settings.batch_size or run.cfg.train.batch_size
    seq_len = run.target_cfg.seq_len
    n_batches = math.ceil(settings.tokens / (batch * seq_len))
    if n_batches * batch * seq_len > MAX_TOKENS:
        raise RunDirError(f"--tokens {settings.tokens}: at most {MAX_TOKENS} tokens per harvest")
    return settings.as_dict() | {
        "batch_size": batch,
        "seed": run.cfg.seed if settings.seed is None else settings.seed,
        "step": run.step,
        "threshold": run.cfg.eval.ci_alive_threshold,
        "corpus": str(run.target_cfg.data.corpus),
        "tokenizer": tokens.meta["tokenizer"],
        "seq_len": seq_len,
        "compute_dtype": run.cfg.train.compute_dtype,
        "n_batches": n_batches,
    }


def host(tree: Any) -> Any:
    """Numpy copies of replicated (possibly multi-process) arrays."""
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


@dataclass(frozen=True)
class HarvestResult:
    folder: Path
    settings: dict[str, Any]
    summary: dict[str, Any]
    seconds: float  # the pass over the batches (compilation included), not the table writing
    first_batch_seconds: float  # the first batch of this call alone: mostly compilation
    resumed_from: int  # batches already done when this call started
    batches: int  # batches run by this call


def run_harvest(
    run_dir: Path,
    settings: HarvestSettings,
    step: int | None = None,
    resume: bool = False,
    runs_dir: Path | None = None,
    devices: list | None = None,
    save_every: int = SAVE_EVERY,
    show_progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> HarvestResult:
    """Harvest checkpoint `step` of `run_dir` into `run_dir/harvest/step_<N>/`. Without `resume`
    a previous harvest of that step is replaced; with it, its saved progress is continued (the
    settings must match). `devices`: the mesh's devices (default all); `on_batch(i)` runs after
    batch i and its save (tests stop a harvest there)."""
    with STOP.installed():  # a signal while loading stops at once, nothing saved (exit 75)
        run = open_run(run_dir, step, runs_dir)
        return harvest(run, settings, resume, devices, save_every, show_progress, on_batch)


def harvest(
    run: OpenRun,
    settings: HarvestSettings,
    resume: bool = False,
    devices: list | None = None,
    save_every: int = SAVE_EVERY,
    show_progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> HarvestResult:
    """`run_harvest` on a run already open (the bench opens one with fresh weights)."""
    tokens = token_store(run)
    resolved = resolved_settings(run, settings, tokens)
    folder = store.step_dir(run.run_dir, run.step)
    mesh = build_mesh(run.cfg.mesh, devices)
    n_devices = mesh.devices.size
    problems = mesh_problems(run.cfg.mesh, n_devices, (("batch_size", resolved["batch_size"]),), ())
    if problems:
        raise RunDirError("harvest on this mesh: " + "; ".join(m for _, m in problems))
    plan = PlacementPlan.for_config(mesh, run.cfg.mesh)
    spec = HarvestSpec(
        tuple(nnx.merge(run.graphdef, run.params).site_C.items()),
        resolved["threshold"],
        resolved["top_k"],
        resolved["context"],
        resolved["reservoir"],
        int(run.target.n_features),
        resolved["seed"],
        resolved["batch_size"],
        resolved["seq_len"],
        resolved["compute_dtype"],
    )
    state, done, ci_sum = init_state(spec), 0, np.zeros(spec.total_C, np.float64)
    saved = store.load_progress(folder) if resume else None
    if saved is not None:
        saved_settings, done, state = saved
        if saved_settings != resolved:
            diff = sorted(k for k in resolved if saved_settings.get(k) != resolved.get(k))
            raise RunDirError(
                f"{folder} was harvested with other settings ({', '.join(diff)}); rerun "
                "without --resume to start again"
            )
        ci_sum = state.pop("ci_sum")
    elif resume and _finished_with(folder, resolved):
        summary = json.loads((folder / store.SUMMARY).read_text())
        print(f"{folder}: already harvested with these settings", file=sys.stderr)
        return HarvestResult(folder, resolved, summary, 0.0, 0.0, resolved["n_batches"], 0)
    elif is_main_process():
        if resume:
            print(f"{folder}: no saved progress, starting from the first batch", file=sys.stderr)
        store.clear(folder)
    replicated = plan.replicated()
    params = jax.device_put(run.params, plan.decomposition_shardings(run.params))
    target_graphdef, target_state = nnx.split(run.target)
    target_state = jax.device_put(target_state, plan.target_shardings(target_state))
    objective = Objective.from_terms(run.cfg.losses)
    step_fn = make_harvest_step(spec, objective, run.graphdef, target_graphdef, replicated)
    device_state = jax.device_put({k: jnp.asarray(v) for k, v in state.items()}, replicated)
    batches = harvest_windows(run, resolved, tokens, plan.batch(2))
    batches.set_state({**batches.get_state(), "next_index": done})
    n_batches, start, started = resolved["n_batches"], done, time.perf_counter()
    first_batch = 0.0
    pending: list[jax.Array] = []  # batch CI sums not yet added (one batch of lag: no sync)

    def save(i: int) -> None:
        """Everything after batch i - 1 (i batches done): the device state and the CI sums."""
        nonlocal ci_sum
        for sums in pending:
            ci_sum = ci_sum + np.asarray(host(sums), np.float64)
        pending.clear()
        state = host(device_state)  # every process takes part in the gather
        if is_main_process():
            store.save_progress(folder, resolved, i, state | {"ci_sum": ci_sum})

    with STOP.installed(), STOP.loop():
        for i in range(done, n_batches):
            x = next(batches)
            device_state, sums = step_fn(params, target_state, device_state, x, jnp.int32(i))
            if i == start:  # timed alone: the compilation, for the steady rate after it
                jax.block_until_ready(sums)
                first_batch = time.perf_counter() - started
            pending.append(sums)
            if len(pending) > 2:
                ci_sum = ci_sum + np.asarray(host(pending.pop(0)), np.float64)
            if (i + 1) % save_every == 0 and i + 1 < n_batches:
                save(i + 1)
            if show_progress and is_main_process():
                _progress(i + 1, n_batches, start, started)
            if on_batch is not None:
                on_batch(i)
            if STOP.requested():
                save(i + 1)
                raise Preempted(
                    i + 1,
                    f"harvest stopped after batch {i + 1} of {n_batches}, progress saved: "
                    f"continue with `param-decomp harvest {run.run_dir} --step {run.step} "
                    "--resume` and the same options",
                )
        for sums in pending:
            ci_sum = ci_sum + np.asarray(host(sums), np.float64)
        final = host(device_state)
    seconds = time.perf_counter() - started
    harvested = n_batches * spec.batch * spec.seq_len
    summary: dict[str, Any] = {
        "step": run.step,
        "tokens": harvested,
        "split": resolved["split"],
        "threshold": resolved["threshold"],
    }
    if is_main_process():
        U = {s: np.asarray(vu[1]) for s, vu in nnx.merge(run.graphdef, run.params).all_VU().items()}
        tables, sites = results(
            spec,
            final,
            ci_sum,
            harvested,
            run.target,
            U,
            tokens.tokenizer,
            resolved["top_tokens"],
            resolved["coact_top"],
        )
        summary["sites"] = sites
        store.write_tables(folder, tables, resolved, summary)
        store.remove_progress(folder)
    return HarvestResult(folder, resolved, summary, seconds, first_batch, start, n_batches - start)


def _finished_with(folder: Path, settings: dict[str, Any]) -> bool:
    """Whether `folder` holds a finished harvest made with exactly `settings`."""
    if not (folder / store.SUMMARY).is_file():
        return False
    return json.loads((folder / store.SETTINGS).read_text()) == settings


def _progress(done: int, total: int, start: int, started: float) -> None:
    """A line about every tenth of the pass (and the last batch), with the rate so far."""
    if done != total and done % max(total // 10, 1):
        return
    rate = (done - start) / max(time.perf_counter() - started, 1e-9)
    print(f"harvest: batch {done}/{total} ({rate:.2f} batches/s)", file=sys.stderr, flush=True)


def report(result: HarvestResult) -> str:
    """The printed summary: per site alive count and L0, and where the tables went."""
    lines = [
        f"harvested {result.summary['tokens']} tokens of the {result.summary['split']} split "
        f"at step {result.summary['step']} in {result.seconds:.1f} s"
        + (f" (resumed after batch {result.resumed_from})" if result.resumed_from else "")
    ]
    for site, s in result.summary.get("sites", {}).items():
        lines.append(
            f"  {site}: {s['alive_count']}/{s['C']} fire above {result.summary['threshold']}, "
            f"L0 {s['l0']:.3g} (CI > 0: {s['l0_any']:.3g})"
        )
    lines.append(f"wrote {result.folder}")
    return "\n".join(lines)
