"""Where a run's metrics and figures go besides metrics.jsonl (SPEC S11.7).

metrics.jsonl is the run loop's own record and is always written; a logger here is an extra
sink chosen by the config's `logging` block: Weights & Biases, or nothing. Every logged thing
goes through `log_metrics` / `log_images`, so a new producer of metrics or figures (the fast
tier, end-of-run figures, a periodic figure tier) needs no wandb code of its own.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from param_decomp.config.errors import ConfigError
from param_decomp.config.schema import Logging, WandbLogging

WANDB_RUN_ID_FILE = "wandb_run_id"  # in the run folder: `--resume` continues the same wandb run
WANDB_INSTALL = "pip install 'param-decomp[wandb]'"


class MetricsLogger(Protocol):
    """An extra sink of a run's records; `step` is the training step they belong to."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_images(self, step: int, images: Mapping[str, Path]) -> None: ...

    def close(self, exit_code: int = 0) -> None: ...


class NoLogger:
    """The sink of a run without a `logging` block, and of every process but process 0."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def log_images(self, step: int, images: Mapping[str, Path]) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass


def wandb_missing(config_file: str | Path) -> ConfigError:
    return ConfigError(
        config_file, [("logging.wandb", f"is set but wandb is not installed: {WANDB_INSTALL}")]
    )


def check_logging_available(logging: Logging, config_file: str | Path) -> None:
    """Refuse a config whose logger is not installed before anything is built or written
    (looks for the package without importing it: wandb takes a second to import)."""
    if logging.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise wandb_missing(config_file)


class WandbLogger:
    """One wandb run per run folder. Its id is kept in the folder, so a resumed run continues
    it (`resume="allow"`); a fresh or overwritten run starts a new one. Records of steps the
    wandb run already has (a crash after the last checkpoint) are dropped by wandb itself."""

    def __init__(
        self, settings: WandbLogging, config: Mapping[str, Any], run_dir: Path, resume: bool
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise wandb_missing(run_dir / "config.yaml") from None
        self._image = wandb.Image
        id_file = run_dir / WANDB_RUN_ID_FILE
        if resume and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(8)
            id_file.write_text(run_id + "\n")
        directory = Path(settings.dir or os.environ.get("WANDB_DIR") or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode,
            dir=directory,
            name=str(config.get("run_name", run_dir.name)),
            tags=settings.tags,
            config=dict(config),
            id=run_id,
            resume="allow",
            reinit="create_new",  # a target trained inside a decomposition has its own run
        )

    @property
    def run_id(self) -> str:
        return self._run.id

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def log_images(self, step: int, images: Mapping[str, Path]) -> None:
        """Each PNG as the image `figures/<name>`: the same name at every step is one slider."""
        if images:
            logged = {f"figures/{name}": self._image(str(path)) for name, path in images.items()}
            self._run.log(logged, step=step)

    def close(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)


def open_logger(config: Mapping[str, Any], run_dir: Path, resume: bool) -> MetricsLogger:
    """The sink the job config's `logging` block asks for (call on process 0 only)."""
    settings = Logging.model_validate(config.get("logging") or {}).wandb
    if settings is None:
        return NoLogger()
    return WandbLogger(settings, config, run_dir, resume)
