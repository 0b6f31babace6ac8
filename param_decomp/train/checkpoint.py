"""Orbax checkpoints of pytrees, with errors that name the missing path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class MissingCheckpointError(FileNotFoundError):
    pass


def save_pytree(directory: Path, step: int, tree: Any, keep: int = 2) -> None:
    """Write `tree` as step `step` under `directory` (collectively when multi-process)."""
    directory = Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    with ocp.CheckpointManager(directory, options=options) as manager:
        manager.save(step, args=ocp.args.StandardSave(tree))
        manager.wait_until_finished()


def latest_step(directory: Path) -> int | None:
    directory = Path(directory).resolve()
    if not directory.exists():
        return None
    with ocp.CheckpointManager(directory) as manager:
        return manager.latest_step()


def restore_pytree(directory: Path, abstract_tree: Any, step: int | None = None) -> Any:
    """Restore into the structure (and shardings) of `abstract_tree`."""
    directory = Path(directory).resolve()
    step = latest_step(directory) if step is None else step
    if step is None:
        raise MissingCheckpointError(f"no checkpoint found under {directory}")
    with ocp.CheckpointManager(directory) as manager:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract_tree))
