"""Schema and loader of `param-decomp study` configs: one base pretrain config, named cells of
overrides, seeds, and the write-up's fixed text (published figures, caveats) (SPEC S16).

Every (cell, seed) resolves to a full, validated `PretrainConfig` at load time, so a typo in
the last cell fails before the first run starts, not an hour into the grid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, field_validator, model_validator

from param_decomp.config.errors import ConfigError, format_validation_error
from param_decomp.config.loading import (
    config_boundary,
    read_yaml,
    require_beside,
)
from param_decomp.config.pretrain_schema import PretrainConfig, pretrain_config_from_data
from param_decomp.config.schema import RunName, StrictModel

# Keys a cell may not override: the study sets them per run.
STUDY_OWNED_KEYS = ("seed", "run_name")


class Published(StrictModel):
    """A published result a cell relates to, quoted in the write-up next to this study's number.

    `direction` is what the source found for the cell against plain CE (lower bpb = better);
    `delta_bpb`, when the source gives one, is its signed change in val bits per byte."""

    claim: str = Field(min_length=1, description="the figure and where it comes from")
    direction: Literal["better", "worse"]
    delta_bpb: float | None = None

    @model_validator(mode="after")
    def _sign_matches(self) -> Published:
        if self.delta_bpb is not None and (self.delta_bpb < 0) != (self.direction == "better"):
            raise ValueError(
                f"delta_bpb {self.delta_bpb} contradicts direction {self.direction!r} "
                "(better means a negative change in bits per byte)"
            )
        return self


class Cell(StrictModel):
    """One row of the grid: overrides merged into the base config, trained at each seed."""

    name: RunName
    overrides: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] | None = Field(default=None, min_length=1)
    baseline: bool = Field(
        default=False, description="the plain-CE cell the others of its vocabulary compare to"
    )
    published: list[Published] = Field(default_factory=list)

    @field_validator("overrides")
    @classmethod
    def _not_study_owned(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        owned = [k for k in STUDY_OWNED_KEYS if k in overrides]
        if owned:
            raise ValueError(f"may not set {owned}: the study sets them per run")
        return overrides

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"{seeds} repeats a seed")
        return seeds


class Report(StrictModel):
    """Where the write-up goes and the text written by people, not generated."""

    markdown: str = Field(min_length=1, description="markdown file, relative to the working dir")
    plot: str = Field(min_length=1, description="PNG of val bpb vs step, relative to the same")
    title: str = Field(min_length=1)
    intro: str = ""
    caveats: str = Field(min_length=1, description="what would change the conclusion")


class StudyConfig(StrictModel):
    """`param-decomp study` config."""

    name: RunName
    base: str | dict[str, Any] = Field(
        description="pretrain config: a YAML path (working dir first, then the study's folder) "
        "or the mapping inline"
    )
    seeds: list[int] | None = Field(default=None, min_length=1, description="default per cell")
    cells: list[Cell] = Field(min_length=1)
    report: Report

    @model_validator(mode="after")
    def _cells(self) -> StudyConfig:
        names = [c.name for c in self.cells]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"cell names must be unique; repeated: {repeated}")
        unseeded = [c.name for c in self.cells if c.seeds is None and self.seeds is None]
        if unseeded:
            raise ValueError(f"cells {unseeded} have no seeds and there is no top-level `seeds`")
        return self


@dataclass(frozen=True)
class PlannedRun:
    """One (cell, seed) of a study with its resolved pretrain config."""

    cell: Cell
    seed: int
    config: PretrainConfig

    @property
    def name(self) -> str:
        return f"{self.cell.name}__seed{self.seed}"

    @property
    def config_hash(self) -> str:
        """What the done-check keys on (S16.2): the resolved config without its run name."""
        return config_hash(self.config)


@dataclass(frozen=True)
class Study:
    config: StudyConfig
    path: Path
    runs: list[PlannedRun]

    def group_of(self, cell: Cell) -> str:
        return tokenizer_group(self.runs_of(cell)[0].config)

    def runs_of(self, cell: Cell) -> list[PlannedRun]:
        return [r for r in self.runs if r.cell.name == cell.name]


def config_hash(cfg: PretrainConfig) -> str:
    dumped = cfg.model_dump(mode="json", exclude={"run_name"})
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_group(cfg: PretrainConfig) -> str:
    """The vocabulary a cell belongs to; cells compare to the baseline of their own group."""
    tok = cfg.data.tokenizer
    if isinstance(tok, str):
        return f"{tok} tokenizer, vocab {cfg.model.vocab_size}"
    if tok.kind == "hf":
        return f"hf tokenizer {Path(tok.path).name}, vocab {cfg.model.vocab_size}"
    kind = tok.model_type if tok.model is None else Path(tok.model).name
    return f"sentencepiece {kind}, vocab {cfg.model.vocab_size}"


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _base_mapping(base: str | dict[str, Any], study_path: Path) -> dict[str, Any]:
    if isinstance(base, dict):
        return base
    return read_yaml(require_beside(base, study_path, "base", study_path))


def _resolve(cfg: StudyConfig, path: Path) -> list[PlannedRun]:
    base = _base_mapping(cfg.base, path)
    runs: list[PlannedRun] = []
    problems: list[tuple[str, str]] = []
    for i, cell in enumerate(cfg.cells):
        seeds = cell.seeds if cell.seeds is not None else cfg.seeds
        assert seeds is not None  # StudyConfig._cells
        for seed in seeds:
            data = deep_merge(base, cell.overrides) | {
                "seed": seed,
                "run_name": f"{cell.name}__seed{seed}",
            }
            try:
                resolved = pretrain_config_from_data(data, path)
            except ConfigError as err:
                where = f"cells[{i}] ({cell.name}, base + overrides)"
                problems += [(f"{where} {key}".rstrip(), msg) for key, msg in err.problems]
                break
            runs.append(PlannedRun(cell, seed, resolved))
    if problems:
        raise ConfigError(path, problems)
    return runs


def _baseline_problems(study: Study) -> list[tuple[str, str]]:
    """Each vocabulary group needs exactly one baseline cell for the comparison section."""
    groups: dict[str, list[Cell]] = {}
    for cell in study.config.cells:
        groups.setdefault(study.group_of(cell), []).append(cell)
    problems = []
    for group, cells in groups.items():
        baselines = [c.name for c in cells if c.baseline]
        if len(baselines) != 1:
            names = [c.name for c in cells]
            problems.append(
                (
                    "cells",
                    f"the cells of {group!r} ({names}) need exactly one `baseline: true`; "
                    f"found {baselines or 'none'}",
                )
            )
    return problems


@config_boundary
def load_study(path: str | Path) -> Study:
    """The validated study with every (cell, seed) resolved; problems are a ConfigError."""
    path = Path(path)
    data = read_yaml(path)
    try:
        cfg = StudyConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(path, format_validation_error(err, StudyConfig, data=data)) from None
    study = Study(cfg, path, _resolve(cfg, path))
    problems = _baseline_problems(study)
    if problems:
        raise ConfigError(path, problems)
    return study
