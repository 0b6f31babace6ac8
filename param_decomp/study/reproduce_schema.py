"""Schema and loader of `param-decomp reproduce` configs: the SPD paper's toy experiments, each a
decomposition config with the answer the paper found (S18).

Every experiment resolves to a validated `DecomposeConfig` at load time (with the step budget
of this invocation), so a typo in the last one fails before the first run starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from param_decomp.config.errors import ConfigError, format_validation_error
from param_decomp.config.loading import read_yaml
from param_decomp.config.schema import DecomposeConfig, RunName, StrictModel
from param_decomp.runconfig.decompose import decompose_config_from_data
from param_decomp.study.schema import deep_merge


class Expectation(StrictModel):
    """What the paper reports, as checks on our numbers (S18.4)."""

    alive: dict[str, PositiveInt] = Field(
        default_factory=dict, description="site -> alive components the paper found"
    )
    tolerance: NonNegativeFloat = Field(
        default=0.0, description="allowed |alive - expected| as a fraction of expected"
    )
    zero_identity_error: bool = Field(
        default=False, description="the identity sites' CI error must be 0 (S18.3)"
    )
    text: str = Field(min_length=1, description="the paper's outcome, in words")


class Experiment(StrictModel):
    """One toy experiment: its decomposition config and how its answer is scored."""

    name: RunName
    title: str = Field(min_length=1)
    config: str = Field(min_length=1, description="decompose YAML, relative to the working dir")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="laid over the decompose YAML (mappings merge)"
    )
    paper_steps: PositiveInt | None = Field(
        default=None, description="the paper's step count (default: the YAML's train.steps)"
    )
    identity_sites: list[str] = Field(
        default_factory=list, description="sites expected to hold one component per feature"
    )
    dense_sites: dict[str, PositiveInt] = Field(
        default_factory=dict, description="site -> k components expected on for every input"
    )
    expect: Expectation
    cpu_note: str = Field(default="", description="why it may be left unrun on a CPU")
    measured_note: str = Field(
        default="",
        description="a measurement explaining a finished run's outcome (e.g. why an alive count "
        "differs), rendered under it; not part of the run's config hash",
    )


class ReproduceConfig(StrictModel):
    """`param-decomp reproduce` config."""

    name: RunName
    title: str = Field(min_length=1)
    markdown: str = Field(min_length=1, description="the write-up, relative to the working dir")
    figures: str = Field(min_length=1, description="folder for the CI figures copied beside it")
    intro: str = ""
    experiments: list[Experiment] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ReproduceConfig:
        names = [e.name for e in self.experiments]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"experiment names must be unique; repeated: {repeated}")
        return self


@dataclass(frozen=True)
class PlannedExperiment:
    """An experiment with its resolved config at this invocation's budget."""

    spec: Experiment
    config: DecomposeConfig
    config_path: str
    paper_steps: int

    @property
    def shortened(self) -> bool:
        return self.config.train.steps < self.paper_steps

    @property
    def config_hash(self) -> str:
        dumped = self.config.model_dump(mode="json", exclude={"run_name"})
        return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Reproduction:
    config: ReproduceConfig
    path: Path
    experiments: list[PlannedExperiment]


def budget_steps(paper_steps: int, scale: float, override: int | None) -> int:
    """Steps this invocation runs: an explicit per-experiment override, else the paper's
    steps times `scale` (at least 1)."""
    if override is not None:
        return override
    return max(1, round(paper_steps * scale))


def run_name(name: str, steps: int, paper_steps: int) -> str:
    """The run folder's name: a shortened run never shares the full run's folder."""
    return f"paper_{name}" if steps >= paper_steps else f"paper_{name}__{steps}steps"


def _plan(
    exp: Experiment, index: int, path: Path, scale: float, steps: dict[str, int]
) -> PlannedExperiment:
    data = read_yaml(exp.config)
    own_steps = int(data.get("train", {}).get("steps", 0))
    data = deep_merge(data, exp.overrides)
    paper = exp.paper_steps or own_steps
    if paper <= 0:
        raise ConfigError(path, [(f"experiments[{index}].paper_steps", "no train.steps to scale")])
    n = budget_steps(paper, scale, steps.get(exp.name))
    data = deep_merge(data, {"train": {"steps": n}}) | {"run_name": run_name(exp.name, n, paper)}
    return PlannedExperiment(exp, decompose_config_from_data(data, exp.config), exp.config, paper)


def load_reproduction(
    path: str | Path,
    steps_scale: float = 1.0,
    steps: dict[str, int] | None = None,
    only: list[str] | None = None,
) -> Reproduction:
    """The validated reproduction, every experiment resolved at the budget (`steps_scale`, or
    `steps` per experiment name); `only` keeps the named experiments (all when None)."""
    path = Path(path)
    data = read_yaml(path)
    try:
        cfg = ReproduceConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(path, format_validation_error(err, ReproduceConfig, data=data)) from None
    names = [e.name for e in cfg.experiments]
    unknown = sorted(set(only or []) - set(names)) + sorted(set(steps or {}) - set(names))
    if unknown:
        raise ConfigError(path, [("experiments", f"no experiment named {unknown}; have {names}")])
    if steps_scale <= 0:
        raise ConfigError(path, [("--steps-scale", f"must be > 0, got {steps_scale}")])
    planned = [
        _plan(e, i, path, steps_scale, steps or {})
        for i, e in enumerate(cfg.experiments)
        if only is None or e.name in only
    ]
    return Reproduction(cfg, path, planned)
