"""A target's run folder as its cache: restore the finished run, else (continue to) train it.

One rule for both target jobs (`train_target` for toys, `pretrain` for LMs), so a
decomposition finds, resumes or trains its target the same way whichever it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flax import nnx

from param_decomp.train.checkpoint import restore_module
from param_decomp.train.run_dir import has_checkpoints, target_run_dir


def cached_or_trained(
    run_name: str,
    runs_dir: Path,
    final_step: int,
    untrained: Callable[[], nnx.Module],
    train: Callable[[bool], nnx.Module],
    noun: str,
    verb: str,
) -> nnx.Module:
    """The model saved at `final_step` in the target's run folder if the run finished; else
    `train(resume)`, resuming an interrupted run from its latest checkpoint. `untrained()`
    builds the structure the checkpoint is restored into; `noun` and `verb` word the message
    ("trained target", "training")."""
    run = target_run_dir(run_name, runs_dir)
    steps = has_checkpoints(run)
    if final_step in steps:
        return restore_module(run / "checkpoints", untrained(), final_step)
    print(
        f"{noun} {run_name!r} is incomplete (steps {steps}); resuming it"
        if steps
        else f"no {noun} at {run}; {verb} it first"
    )
    return train(bool(steps))
