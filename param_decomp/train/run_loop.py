"""The one run loop of every job: toy-target training, LM pretraining and decomposition (S11).

A job hands the loop its state, a jitted step (placed by the job's mesh plan), its data
position and its evaluation. The loop owns everything that must exist once: progress,
metrics.jsonl, checkpoints, resume, signals and the NaN stop.

Exit codes (the CLI maps the exceptions below): 0 done; 1 a loss turned NaN/inf
(`NonFiniteLossError`); 2 bad config, data or run folder; 75 preempted by SIGTERM/SIGINT
(`Preempted`, resume with `--resume`); 130 a second signal aborted at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from param_decomp.train.checkpoint import RunCheckpoints, abstract_of
from param_decomp.train.loggers import MetricsLogger, NoLogger, open_logger

EXIT_NONFINITE = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later, with --resume
EXIT_ABORTED = 130


class NonFiniteLossError(RuntimeError):
    """A loss term turned NaN/inf; the last checkpoint before it is kept untouched."""


class Preempted(Exception):  # noqa: N818 - a signal, not a failure
    """SIGTERM/SIGINT: the run stopped at `step` (None: before its first step, nothing saved)."""

    def __init__(self, step: int | None, message: str):
        super().__init__(message)
        self.step = step


class DataPosition(Protocol):
    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


def is_main_process() -> bool:
    return jax.process_index() == 0


class _StopSignals:
    """SIGTERM/SIGINT handling for the whole process. In set-up (loading, target training
    outside a loop, the faithfulness warm-up) a signal stops at once without a checkpoint; in
    a loop it asks the loop to finish its step, save and exit; a second signal aborts."""

    def __init__(self) -> None:
        self.count = 0
        self.in_loop = False
        self.depth = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count >= 2:
            print(
                f"\n{name} again: aborting now (the last complete checkpoint is kept)",
                file=sys.stderr,
                flush=True,
            )
            os._exit(EXIT_ABORTED)
        if not self.in_loop:
            raise Preempted(
                None, f"{name} during set-up: stopped before the first step, nothing saved"
            )
        print(
            f"\n{name}: finishing this step, then saving a checkpoint (again to abort)",
            file=sys.stderr,
            flush=True,
        )

    def requested(self) -> bool:
        """Whether to stop after this step; every process gets the same answer."""
        local = self.count > 0
        if jax.process_count() == 1:
            return local
        flags = multihost_utils.process_allgather(np.asarray([local]))
        return bool(np.any(flags))

    @contextmanager
    def installed(self) -> Iterator[_StopSignals]:
        if self.depth == 0:
            self.count = 0
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        self.depth += 1
        try:
            yield self
        finally:
            self.depth -= 1
            if self.depth == 0:
                for sig, previous in self._previous.items():
                    signal.signal(sig, previous)

    @contextmanager
    def loop(self) -> Iterator[None]:
        self.in_loop = True
        try:
            yield
        finally:
            self.in_loop = False


STOP = _StopSignals()


@dataclass
class Job:
    """What a job hands the loop. `step_fn(state, step)` runs one jitted step (it reads its
    own batch); `checkpoint_items(state)` names the pytrees saved per step and
    `from_checkpoint(state, items)` puts restored ones back."""

    name: str
    run_dir: Path
    config: dict[str, Any]
    resume_hint: str
    steps: int
    state: Any
    step_fn: Callable[[Any, int], tuple[Any, dict[str, jax.Array]]]
    checkpoint_items: Callable[[Any], dict[str, Any]]
    from_checkpoint: Callable[[Any, dict[str, Any]], Any]
    log_every: int
    checkpoint_every: int | None = None
    keep: int | None = 2
    data: DataPosition | None = None
    evaluate: Callable[[Any], dict[str, float]] | None = None
    eval_every: int | None = None
    eval_at_start: bool = False
    # the figure tier (S14.7) every `figures_every` (None: never) steps before the last (the
    # job's own finish writes the last); returns {figure name: PNG path}
    figures: Callable[[Any, int], dict[str, Path]] | None = None
    figures_every: int | None = None
    mean_over_window: bool = False  # log the mean of each metric since the last log
    progress_keys: tuple[str, ...] = ()
    show_progress: bool = True
    print_lines: bool = False  # one printed line per logged record (pretraining, targets)
    extra: dict[str, Any] = field(default_factory=dict)
    # Optional: `chunk_fn(state, step, n)` runs steps step..step+n-1 in one dispatch (a scan of
    # the same step), metrics stacked on a leading axis of n. The loop then runs from boundary
    # to boundary (S11.8), so a job of tiny steps is not bound by one dispatch per step.
    chunk_fn: Callable[[Any, int, int], tuple[Any, dict[str, jax.Array]]] | None = None


# The longest chunk (S11.8): chunk ends also fall on its multiples, so a signal is answered
# within this many steps and a straight and a resumed run share every chunk end.
MAX_CHUNK = 1000


def chunk_end(job: Job, step: int) -> int:
    """The first step after `step` at which the loop must act: a log, evaluation, figure or
    checkpoint step, a multiple of MAX_CHUNK, or the last step (S11.8). A function of `step`
    and the schedule only, so every run of the same config has the same chunk ends."""
    periods = [job.log_every, MAX_CHUNK]
    periods += [p for p in (job.eval_every, job.checkpoint_every) if p]
    if job.figures is not None and job.figures_every:
        periods.append(job.figures_every)
    nearest = min((step // p + 1) * p for p in periods)
    return min(nearest, job.steps)


def _first_bad(records: list[tuple[int, dict[str, Any]]]) -> tuple[int, str] | None:
    for step, metrics in records:
        bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
        if bad:
            return step, ", ".join(sorted(bad))
    return None


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def _rewind_metrics(path: Path, step: int) -> None:
    """Keep the records up to the restored step: a resumed run appends the rest."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def exit_code_of(err: BaseException) -> int:
    """The exit code the CLI ends with when `err` ends the run."""
    if isinstance(err, Preempted):
        return EXIT_PREEMPTED
    if isinstance(err, KeyboardInterrupt):
        return EXIT_ABORTED
    return EXIT_NONFINITE if isinstance(err, NonFiniteLossError) else 1


@contextmanager
def job_logging(job: Job, resume: bool) -> Iterator[MetricsLogger]:
    """The extra logger the job's config asks for (process 0 only; S11.7), closed with the
    exit code the run ends with."""
    logger = open_logger(job.config, job.run_dir, resume) if is_main_process() else NoLogger()
    try:
        yield logger
    except BaseException as err:
        logger.close(exit_code_of(err))
        raise
    logger.close()


def run_job(
    job: Job, resume: bool = False, logger: MetricsLogger | None = None
) -> tuple[Any, dict[str, float]]:
    """Train `job` to its last step (from its latest usable checkpoint with `resume`);
    return the final state and the last logged record. Records go to metrics.jsonl and to
    `logger` (left open for the caller's end-of-run records); without one the job's config
    chooses it and it is closed here."""
    if logger is None:
        with job_logging(job, resume) as owned:
            return _train(job, resume, owned)
    return _train(job, resume, logger)


def _train(job: Job, resume: bool, logger: MetricsLogger) -> tuple[Any, dict[str, float]]:
    checkpoints = RunCheckpoints(job.run_dir / "checkpoints", job.keep)
    state, start = job.state, 0
    main = is_main_process()
    if resume:
        abstract = abstract_of(job.checkpoint_items(state))
        start, items, data_state = checkpoints.restore_latest(
            abstract, warn=lambda msg: print(msg, file=sys.stderr, flush=True)
        )
        state = job.from_checkpoint(state, items)
        if job.data is not None:
            if data_state is None:
                raise ValueError(f"checkpoint step {start} has no data-pipeline position")
            job.data.set_state(data_state)
        if main:
            print(f"{job.name}: resumed from step {start} of {job.steps}", flush=True)
    metrics_path = job.run_dir / "metrics.jsonl"
    if main:
        if resume:
            _rewind_metrics(metrics_path, start)
        else:
            metrics_path.write_text("")
    metrics_file = metrics_path.open("a") if main else None
    bar = tqdm(
        total=job.steps,
        initial=start,
        file=sys.stdout,
        disable=not (job.show_progress and main and not job.print_lines),
    )
    last: dict[str, float] = {}

    def record(values: dict[str, float]) -> None:
        nonlocal last
        last = values
        if metrics_file is not None:
            metrics_file.write(json.dumps(values) + "\n")
            metrics_file.flush()
        logger.log_metrics(values["step"], {k: v for k, v in values.items() if k != "step"})
        if job.print_lines and job.show_progress and main:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "step")
            print(f"{job.name} step {values['step']:>6d}/{job.steps}  {shown}", flush=True)

    def save(step: int, wait: bool) -> None:
        data = job.data.get_state() if job.data is not None else None
        checkpoints.save(step, job.checkpoint_items(state), data, job.config, wait=wait)

    try:
        if job.eval_at_start and start == 0 and job.evaluate is not None:
            record({"step": 0, **job.evaluate(state)})
        unchecked: list[tuple[int, dict[str, jax.Array]]] = []
        window: list[dict[str, jax.Array]] = []
        in_flight: dict[str, jax.Array] | None = None
        with STOP.loop():
            step = start
            while step < job.steps:
                if job.chunk_fn is not None and (n := chunk_end(job, step) - step) > 1:
                    state, stacked = job.chunk_fn(state, step, n)
                    host = jax.device_get(stacked)
                    per_step = [{k: v[i] for k, v in host.items()} for i in range(n)]
                    unchecked += [(step + 1 + i, m) for i, m in enumerate(per_step)]
                    window += per_step
                    step += n
                else:
                    state, metrics = job.step_fn(state, step)
                    if in_flight is not None:
                        # At most one step queued: XLA:CPU's multi-device collectives can
                        # deadlock when many executions are queued (seen with jax 0.10.2).
                        jax.block_until_ready(in_flight)
                    in_flight = metrics
                    step += 1
                    unchecked.append((step, metrics))
                    window.append(metrics)
                done = step
                last_step = done == job.steps
                log = done % job.log_every == 0 or last_step
                evaluate = job.evaluate is not None and (
                    last_step or (job.eval_every is not None and done % job.eval_every == 0)
                )
                figures = (
                    job.figures is not None
                    and job.figures_every is not None
                    and done % job.figures_every == 0
                    and not last_step
                )
                every = job.checkpoint_every
                periodic = bool(every) and done % every == 0 and not last_step
                stopping = STOP.requested()
                if not (log or evaluate or figures or periodic or stopping or last_step):
                    continue
                bad = _first_bad(jax.device_get(unchecked))  # never checkpoint a NaN state
                unchecked = []
                if bad is not None:
                    raise NonFiniteLossError(
                        f"non-finite loss at step {bad[0]}: {bad[1]} ({job.name}; the last "
                        f"checkpoint before it is kept in {checkpoints.directory})"
                    )
                values: dict[str, float] = {}
                if log:
                    host = [_floats(m) for m in jax.device_get(window)]
                    if job.mean_over_window:
                        values = {k: float(np.mean([h[k] for h in host])) for k in host[-1]}
                    else:
                        values = host[-1]
                    window = []
                    bar.set_postfix(
                        {
                            k.split("/")[-1]: f"{values[k]:.2e}"
                            for k in job.progress_keys
                            if k in values
                        }
                    )
                    bar.update(done - bar.n)
                if evaluate:
                    assert job.evaluate is not None
                    values |= job.evaluate(state)
                if values:
                    record({"step": done, **values})
                if figures:
                    assert job.figures is not None
                    logger.log_images(done, job.figures(state, done))
                if stopping:
                    save(done, wait=True)
                    raise Preempted(
                        done,
                        f"{job.name}: stopped by signal after step {done}; checkpoint "
                        f"saved in {checkpoints.directory}. Resume with: {job.resume_hint}",
                    )
                if periodic:
                    save(done, wait=False)
        if start < job.steps:
            save(job.steps, wait=True)
    finally:
        bar.close()
        checkpoints.close()
        if metrics_file is not None:
            metrics_file.close()
    return state, last
