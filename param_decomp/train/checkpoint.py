"""Orbax checkpoints of runs, with errors that name the missing path.

A step holds named pytree items (`decomposition` or `model`, `training`), the resolved config
and, for runs fed by the grain pipeline, the item `data` (the pipeline position as JSON), so a
restored run continues with the next batch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx


class MissingCheckpointError(FileNotFoundError):
    pass


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


def restore_data_state(directory: Path, step: int | None = None) -> dict[str, Any] | None:
    """The data-pipeline position saved with a step (None if the run had no pipeline)."""
    directory = Path(directory).resolve()
    step = _resolved_step(directory, step)
    if not (directory / str(step) / "data").exists():
        return None
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    return dict(restored["data"])


def restore_module(directory: Path, module: nnx.Module, step: int | None = None) -> nnx.Module:
    """`module` (freshly built, same structure) with the item `model` of a run's checkpoint
    step (default: the latest), restored as host arrays on every process."""
    directory = Path(directory).resolve()
    step = _resolved_step(directory, step)
    graphdef, state = nnx.split(module)
    host_template = jax.tree.map(np.asarray, state)
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(host_template))
        )
    return nnx.merge(graphdef, restored["model"])


def restore_item(directory: Path, step: int, name: str, template: Any) -> Any:
    """The pytree item `name` of checkpoint `step`, restored as host arrays shaped like
    `template` (numpy leaves): what `param-decomp eval` reads, whatever mesh saved it."""
    directory = Path(directory).resolve()
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(
            step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(template)})
        )
    return restored[name]


def restore_json(directory: Path, step: int, name: str) -> dict[str, Any]:
    """The JSON item `name` (`config`, `data`) of checkpoint `step`."""
    directory = Path(directory).resolve()
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
    return dict(restored[name])


class CheckpointError(RuntimeError):
    """No usable checkpoint: names every step tried and why it could not be read."""


def abstract_of(tree: Any) -> Any:
    """What a restore fills in place: device arrays as shapes, dtypes and shardings (restored
    sharded, each process reading its shards), host arrays as themselves (restored on host)."""

    def spec(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        return np.asarray(leaf)

    return jax.tree.map(spec, tree)


class RunCheckpoints:
    """The checkpoints of one run: per step the named pytree items (saved sharded, each
    process writing its shards), the data-pipeline position and the resolved config (S11.4).

    Saving is asynchronous where orbax offers it; `save(..., wait=True)` is synchronous (used
    on preemption and at the end). A step becomes visible only once complete (orbax writes it
    under a temporary name and renames it), so a crash mid-save leaves the previous steps.
    """

    def __init__(self, directory: Path, keep: int | None = 2, async_save: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(
        self,
        step: int,
        items: dict[str, Any],
        data_state: dict[str, Any] | None,
        config: dict[str, Any],
        wait: bool = False,
    ) -> None:
        args: dict[str, Any] = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        args["config"] = ocp.args.JsonSave(config)
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)
        if wait:
            self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def restore_latest(
        self, abstract_items: dict[str, Any], warn: Any = print
    ) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
        """(step, items, data state) of the newest step that restores; an unreadable step
        (truncated, partly written, from another config) is skipped with a warning naming it
        (S11.5)."""
        failures: list[str] = []
        for step in reversed(self.steps()):
            step_dir = self.directory / str(step)
            try:
                args = {n: ocp.args.StandardRestore(t) for n, t in abstract_items.items()}
                if (step_dir / "data").exists():
                    args["data"] = ocp.args.JsonRestore()
                restored = self._manager.restore(step, args=ocp.args.Composite(**args))
                items = {name: restored[name] for name in abstract_items}
                _check_restored(items, abstract_items)
            except Exception as err:  # noqa: BLE001 - any unreadable step is skipped, named
                reason = (
                    f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                )
                failures.append(f"step {step} ({step_dir}): {reason}")
                warn(
                    f"warning: checkpoint step {step} at {step_dir} is unusable ({reason}); "
                    "trying the previous one"
                )
                continue
            data = dict(restored["data"]) if "data" in args else None
            self._set_aside([int(f.split()[1]) for f in failures])
            return step, items, data
        if failures:
            raise CheckpointError(
                f"no usable checkpoint under {self.directory}:\n  " + "\n  ".join(failures)
            )
        raise MissingCheckpointError(f"no checkpoint found under {self.directory}")

    def _set_aside(self, steps: list[int]) -> None:
        """Move unusable newer steps to `<run>/corrupt_checkpoints/` (kept for inspection,
        out of the way of the steps the resumed run saves again)."""
        if steps and jax.process_index() == 0:
            aside = self.directory.parent / "corrupt_checkpoints"
            aside.mkdir(exist_ok=True)
            for step in steps:
                target = aside / str(step)
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(str(self.directory / str(step)), str(target))
        if steps and jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("param_decomp: corrupt steps set aside")
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _check_restored(items: dict[str, Any], abstract_items: dict[str, Any]) -> None:
    """A restored step must match the requested structure, shapes and dtypes exactly."""
    for name, abstract in abstract_items.items():
        want = jax.tree.structure(abstract)
        got = jax.tree.structure(items[name])
        if want != got:
            raise ValueError(f"item {name!r} has another structure than this run's state")
        for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(items[name]), strict=True):
            if tuple(a.shape) != tuple(np.shape(b)) or a.dtype != b.dtype:
                raise ValueError(
                    f"item {name!r}: a leaf of shape {np.shape(b)} {b.dtype}, "
                    f"expected {tuple(a.shape)} {a.dtype}"
                )
