"""A run folder before anything is written to it: fresh, resumed, or refused (S11.4).

Nothing finished is ever silently deleted: a folder with checkpoints is continued only with
`--resume` (and only with the config it was started with, up to the keys that may change),
replaced only with `--overwrite`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

# Keys whose change does not change the trajectory up to the resumed step (dotted prefixes).
RESUMABLE_CHANGES = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "eval",
    "checkpointing",
    "logging",
)


# Where run folders go unless the command says otherwise (`--runs-dir`).
RUNS_DIR = Path("runs")


def target_run_dir(run_name: str, runs_dir: Path = RUNS_DIR) -> Path:
    """A trained or pretrained target's run folder (its cache): `runs_dir/targets/<run_name>`."""
    return Path(runs_dir) / "targets" / run_name


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says why and what to pass."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: tree}


def _same_target_file(saved: Any, requested: Any) -> bool:
    """Two target YAML paths name the same target when both files hold the same config.

    The resolved config records the target as an absolute path, so a repository that was moved
    or cloned elsewhere (or a sweep run from another checkout) names the same target by another
    path; the target is what its file says, not where it lies."""
    if not (isinstance(saved, str) and isinstance(requested, str)):
        return False
    try:
        a, b = Path(saved).read_text(), Path(requested).read_text()
    except OSError:
        return False
    if a == b:
        return True
    try:
        return yaml.safe_load(a) == yaml.safe_load(b)
    except yaml.YAMLError:
        return False


def config_differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, except those a resume may change (S11.4)."""
    a, b = _flatten(saved), _flatten(requested)
    keys = sorted(set(a) | set(b))
    allowed = lambda k: any(k == p or k.startswith(p + ".") for p in RESUMABLE_CHANGES)  # noqa: E731
    return [
        f"{k}: saved {a.get(k, '<absent>')!r}, requested {b.get(k, '<absent>')!r}"
        for k in keys
        if a.get(k) != b.get(k)
        and not allowed(k)
        and not (k == "target" and _same_target_file(a.get(k), b.get(k)))
    ]


def set_aside(run_dir: Path) -> Path:
    """Rename a run folder to the first free `<name>.superseded-<n>` beside it, so that a new
    run can take its name and nothing it holds is lost."""
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.superseded-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    return aside


def has_checkpoints(run_dir: Path) -> list[int]:
    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def prepare_run_dir(
    run_dir: Path, config: dict[str, Any], resume: bool, overwrite: bool, command: str
) -> None:
    """Check (and create) `run_dir` for a fresh or resumed run, then write its config.yaml.

    `command` is the command line to show in messages (without --resume/--overwrite)."""
    steps = has_checkpoints(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if resume:
        if not steps:
            raise RunDirError(f"--resume: {run_dir} has no checkpoints; start it without --resume")
        saved_path = run_dir / "config.yaml"
        if saved_path.is_file():
            try:
                saved = yaml.safe_load(saved_path.read_text()) or {}
            except yaml.YAMLError as err:
                raise RunDirError(f"{saved_path}: unreadable ({err})") from None
            differing = config_differences(saved, config)
            if differing:
                raise RunDirError(
                    f"--resume: the config differs from the one {run_dir} was started with "
                    "(only "
                    + ", ".join(RESUMABLE_CHANGES)
                    + " may change):\n  "
                    + "\n  ".join(differing)
                )
    elif steps:
        if not overwrite:
            raise RunDirError(
                f"{run_dir} already has checkpoints (steps {steps}); continue it with "
                f"`{command} --resume` or replace it with `{command} --overwrite`"
            )
        shutil.rmtree(run_dir / "checkpoints")
    _check_writable(run_dir)
    from param_decomp.train.run_loop import is_main_process

    if is_main_process():
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RunDirError(
            f"cannot write to the run folder {run_dir}: {err.strerror or err}"
            + (" (check its permissions)" if not os.access(run_dir.parent, os.W_OK) else "")
        ) from None
