"""Orbax checkpoints of pytrees, with errors that name the missing path.

A step holds the item `state` (the pytree) and, for runs fed by the grain pipeline, the item
`data` (the pipeline position as JSON), so a restored run continues with the next batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx


class MissingCheckpointError(FileNotFoundError):
    pass


def save_pytree(
    directory: Path,
    step: int,
    tree: Any,
    keep: int = 2,
    data_state: dict[str, Any] | None = None,
) -> None:
    """Write `tree` (and the data-pipeline position, if any) as step `step` under
    `directory`, collectively when multi-process."""
    directory = Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    items: dict[str, Any] = {"state": ocp.args.StandardSave(tree)}
    if data_state is not None:
        items["data"] = ocp.args.JsonSave(data_state)
    with ocp.CheckpointManager(directory, options=options) as manager:
        manager.save(step, args=ocp.args.Composite(**items))
        manager.wait_until_finished()


def latest_step(directory: Path) -> int | None:
    directory = Path(directory).resolve()
    if not directory.exists():
        return None
    with ocp.CheckpointManager(directory) as manager:
        return manager.latest_step()


def _resolved_step(directory: Path, step: int | None) -> int:
    step = latest_step(directory) if step is None else step
    if step is None:
        raise MissingCheckpointError(f"no checkpoint found under {directory}")
    return step


def restore_pytree(directory: Path, abstract_tree: Any, step: int | None = None) -> Any:
    """Restore into the structure (and shardings) of `abstract_tree`."""
    directory = Path(directory).resolve()
    step = _resolved_step(directory, step)
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree))
        )
    return restored["state"]


def restore_data_state(directory: Path, step: int | None = None) -> dict[str, Any] | None:
    """The data-pipeline position saved with a step (None if the run had no pipeline)."""
    directory = Path(directory).resolve()
    step = _resolved_step(directory, step)
    if not (directory / str(step) / "data").exists():
        return None
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    return dict(restored["data"])


def save_module(
    directory: Path, step: int, module: nnx.Module, data_state: dict[str, Any] | None = None
) -> None:
    """A frozen model's full state as host copies: every process holds the same values, and
    numpy leaves are written once, so this works single- and multi-process alike."""
    save_pytree(directory, step, jax.tree.map(np.asarray, nnx.state(module)), data_state=data_state)


def restore_module(directory: Path, module: nnx.Module) -> nnx.Module:
    """`module` (freshly built, same structure) with the state saved by `save_module`."""
    graphdef, state = nnx.split(module)
    host_template = jax.tree.map(np.asarray, state)  # restored as host arrays on every process
    return nnx.merge(graphdef, restore_pytree(directory, host_template))
