"""Orbax checkpoints of pytrees, with errors that name the missing path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx


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


def save_module(directory: Path, step: int, module: nnx.Module) -> None:
    """A frozen model's full state as host copies: every process holds the same values, and
    numpy leaves are written once, so this works single- and multi-process alike."""
    save_pytree(directory, step, jax.tree.map(np.asarray, nnx.state(module)))


def restore_module(directory: Path, module: nnx.Module) -> nnx.Module:
    """`module` (freshly built, same structure) with the state saved by `save_module`."""
    graphdef, state = nnx.split(module)
    host_template = jax.tree.map(np.asarray, state)  # restored as host arrays on every process
    return nnx.merge(graphdef, restore_pytree(directory, host_template))
