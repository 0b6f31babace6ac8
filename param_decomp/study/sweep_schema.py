"""Schema and loader of `param-decomp sweep` configs: one base decomposition config, named cells
of dotted-key overrides, and where the write-up goes (SPEC S19.1).

Every cell resolves to a validated `DecomposeConfig` at load time (its target made absolute, so
the cell's own YAML runs from anywhere), so a typo in the last cell fails before the first run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import Field, model_validator

from param_decomp.config.errors import ConfigError, format_validation_error
from param_decomp.config.loading import (
    config_boundary,
    read_yaml,
    require_beside,
)
from param_decomp.config.schema import DecomposeConfig, RunName, StrictModel
from param_decomp.runconfig.decompose import decompose_config_from_data
from param_decomp.study.overrides import with_overrides

SWEEP_OWNED_KEYS = ("run_name",)


class SweepCell(StrictModel):
    """One point of the grid: dotted-key overrides of the base (study/overrides.py)."""

    name: RunName
    overrides: dict[str, Any] = Field(default_factory=dict)
    note: str = ""


class SweepReport(StrictModel):
    markdown: str = Field(min_length=1, description="markdown file, relative to the working dir")
    plot: str = Field(min_length=1, description="the Pareto PNG, relative to the working dir")
    title: str = Field(min_length=1)
    intro: str = ""


class SweepConfig(StrictModel):
    """`param-decomp sweep` config."""

    name: RunName
    base: str = Field(min_length=1, description="decompose YAML (working dir, then this folder)")
    cells: list[SweepCell] = Field(min_length=1)
    report: SweepReport
    l0_share_goal: float = Field(default=0.10, gt=0, le=1, description="drawn on the figure")
    unrecovered_goal: float = Field(default=0.15, gt=0, description="drawn on the figure")

    @model_validator(mode="after")
    def _unique(self) -> SweepConfig:
        names = [c.name for c in self.cells]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"cell names must be unique; repeated: {repeated}")
        owned = [c.name for c in self.cells if any(k in c.overrides for k in SWEEP_OWNED_KEYS)]
        if owned:
            raise ValueError(f"cells {owned} set run_name: the sweep names each run")
        return self


@dataclass(frozen=True)
class PlannedCell:
    cell: SweepCell
    run_name: str
    data: dict[str, Any]  # the cell's full config mapping, target absolute
    config: DecomposeConfig
    sweep_folder: Path

    @property
    def config_hash(self) -> str:
        """What the done-check keys on: the resolved config without its run name, its target
        path relative to the sweep's folder (so a record made in another checkout still
        counts)."""
        dumped = self.config.model_dump(mode="json", exclude={"run_name"})
        target = dumped.get("target")
        if isinstance(target, str):
            dumped["target"] = os.path.relpath(target, self.sweep_folder.resolve())
        elif isinstance(target, dict) and isinstance(target.get("hf"), str):
            dumped["target"] = target | {
                "hf": os.path.relpath(target["hf"], self.sweep_folder.resolve())
            }
        return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]

    def yaml_text(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)


@dataclass(frozen=True)
class Sweep:
    config: SweepConfig
    path: Path
    cells: list[PlannedCell]


def _absolute_target(base: dict[str, Any], base_path: Path, sweep_path: Path) -> dict[str, Any]:
    target = base.get("target")
    if isinstance(target, str):
        return base | {"target": str(require_beside(target, base_path, "base: target", sweep_path))}
    if isinstance(target, dict) and isinstance(target.get("hf"), str):
        folder = require_beside(target["hf"], base_path, "base: target.hf", sweep_path, folder=True)
        return base | {"target": target | {"hf": str(folder)}}
    return base


def _resolve(cfg: SweepConfig, path: Path) -> list[PlannedCell]:
    base_path = require_beside(cfg.base, path, "base", path)
    base = _absolute_target(read_yaml(base_path), base_path, path)
    planned, problems = [], []
    for i, cell in enumerate(cfg.cells):
        where = f"cells[{i}] ({cell.name})"
        run_name = f"{cfg.name}__{cell.name}"
        try:
            data = with_overrides(base, cell.overrides) | {"run_name": run_name}
            if data.get("target") != base.get("target"):  # a cell's own target: beside the sweep
                data = _absolute_target(data, path, path)
        except KeyError as err:
            problems.append((f"{where} overrides", str(err.args[0])))
            continue
        except ConfigError as err:
            problems += [(f"{where} overrides target", m) for _, m in err.problems]
            continue
        try:
            resolved = decompose_config_from_data(data, path)
        except ConfigError as err:
            problems += [(f"{where} base + overrides {k}".rstrip(), m) for k, m in err.problems]
            continue
        planned.append(PlannedCell(cell, run_name, data, resolved, path.parent))
    if problems:
        raise ConfigError(path, problems)
    return planned


@config_boundary
def load_sweep(path: str | Path) -> Sweep:
    """The validated sweep with every cell resolved; problems are a ConfigError."""
    path = Path(path)
    data = read_yaml(path)
    try:
        cfg = SweepConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(path, format_validation_error(err, SweepConfig, data=data)) from None
    return Sweep(cfg, path, _resolve(cfg, path))
