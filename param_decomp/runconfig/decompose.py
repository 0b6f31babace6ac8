"""Load a `decompose` config: its schema, its `losses:` list and its target, all problems at once.

Above `losses/`, because the loss list's schema is the registered term dataclasses themselves
(`losses/registry.py`'s tagged union, imported when a config is loaded, so importing this module
stays light); the rest of the checks are `config/`'s. Every problem is a ConfigError naming the
file and the dotted key (S11.2, S11.3).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel

from param_decomp.config.errors import ConfigError, format_path, format_validation_error
from param_decomp.config.loading import (
    PATH_CHECK_ERRORS,
    config_boundary,
    find_beside,
    not_found_problem,
    path_check_problem,
    read_yaml,
    with_folder_tokenizer,
)
from param_decomp.config.schema import DecomposeConfig, HFTarget, SparseFeatureData


def _nonfinite_problems(obj: Any, loc: tuple[str | int, ...]) -> list[tuple[str, str]]:
    """Every inf/nan float in a validated object (term dataclasses accept them by default)."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [(format_path(loc), f"must be finite, got {obj}")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children: list[tuple[str | int, Any]] = [
            (f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)
        ]
    elif isinstance(obj, BaseModel):
        children = [(name, getattr(obj, name)) for name in type(obj).model_fields]
    elif isinstance(obj, list | tuple):
        children = list(enumerate(obj))
    elif isinstance(obj, dict):
        children = [(str(k), v) for k, v in obj.items()]
    else:
        return []
    return [
        problem for seg, child in children for problem in _nonfinite_problems(child, (*loc, seg))
    ]


def _hf_folder_problems(hf: str, config_path: Path) -> tuple[Path | None, list[tuple[str, str]]]:
    """(resolved folder, problems) of `target: {hf: ...}`: it must be a folder holding
    config.json (S17.1); the rest of the checkpoint is checked when the target is read."""
    try:
        resolved = find_beside(hf, config_path, folder=True)
        if resolved is None:
            return None, [("target.hf", not_found_problem(hf, config_path, folder=True))]
        if not (resolved / "config.json").is_file():
            msg = (
                f"folder {resolved} has no config.json (a Hugging Face model folder holds "
                "config.json and *.safetensors)"
            )
            return None, [("target.hf", msg)]
    except PATH_CHECK_ERRORS as err:
        return None, [("target.hf", path_check_problem(hf, err))]
    return resolved, []


def _validate_terms(adapter: Any, raw_losses: list) -> tuple[list[Any], list[tuple[str, str]]]:
    """(terms, problems) of the `losses:` list. A term validator that fails with an arithmetic
    error (float() of a 400-digit int) is pinned to its entry by validating each one alone."""
    try:
        return adapter.validate_python(raw_losses), []
    except pydantic.ValidationError as err:
        return [], format_validation_error(err, adapter, prefix=("losses",), data=raw_losses)
    except ArithmeticError:
        pass
    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(raw_losses):
        try:
            adapter.validate_python([entry])
        except pydantic.ValidationError as err:
            for key, msg in format_validation_error(err, adapter, data=[entry]):
                problems.append((f"losses[{i}]" + key.removeprefix("[0]"), msg))
        except ArithmeticError as err:
            problems.append((f"losses[{i}]", f"a number is out of range ({err})"))
    return [], problems or [("losses", "a number is out of range")]


def _micro_batch_term_problems(micro_batches: int, terms: list[Any]) -> list[tuple[str, str]]:
    """S10.4: an adversarial term's ascent would see one micro-batch, not the batch."""
    adversarial = [t.type for t in terms if t.needs().adversary is not None]
    if micro_batches == 1 or not adversarial:
        return []
    msg = (
        f"{micro_batches} micro-batches cannot be used with the adversarial term(s) "
        f"{', '.join(adversarial)}: their ascent would see one micro-batch, not the batch; "
        "set train.micro_batches: 1 or drop the adversarial terms"
    )
    return [("train.micro_batches", msg)]


def _decompose_from_data(data: dict, path: str | Path) -> DecomposeConfig:
    from param_decomp.losses.registry import loss_list_adapter  # lazily: the terms import jax

    problems: list[tuple[str, str]] = []
    cfg: DecomposeConfig | None = None
    try:
        cfg = DecomposeConfig.model_validate(data)
    except pydantic.ValidationError as err:
        problems += format_validation_error(err, DecomposeConfig, data=data)

    # Validate the loss list even when the rest failed, so one run reports every problem.
    terms: list[Any] = []
    raw_losses = data.get("losses")
    if isinstance(raw_losses, list) and raw_losses:
        terms, term_problems = _validate_terms(loss_list_adapter(), raw_losses)
        problems += term_problems
        problems += _nonfinite_problems(terms, ("losses",))

    target = data.get("target")
    resolved: Path | None = None
    if isinstance(target, str) and target:
        try:
            resolved = find_beside(target, Path(path))
            if resolved is None:
                problems.append(("target", not_found_problem(target, Path(path))))
        except PATH_CHECK_ERRORS as err:
            problems.append(("target", path_check_problem(target, err)))

    hf_folder: Path | None = None
    if isinstance(target, dict) and isinstance(target.get("hf"), str) and target["hf"]:
        hf_folder, hf_problems = _hf_folder_problems(target["hf"], Path(path))
        problems += hf_problems

    if cfg is not None:
        problems += _micro_batch_term_problems(cfg.train.micro_batches, terms)
    if problems or cfg is None:
        raise ConfigError(path, problems or [("", "invalid config")])
    if isinstance(cfg.target, HFTarget):
        assert hf_folder is not None and not isinstance(cfg.data, SparseFeatureData)
        hf_target = cfg.target.model_copy(update={"hf": str(hf_folder)})
        data = with_folder_tokenizer(cfg.data, hf_folder)
        return cfg.model_copy(update={"losses": terms, "target": hf_target, "data": data})
    return cfg.model_copy(update={"losses": terms, "target": str(resolved)})


@config_boundary
def load_decompose_config(path: str | Path) -> DecomposeConfig:
    """Validated `decompose` config: `losses` holds term objects, `target` an existing path
    (a target YAML, or an hf block whose `hf` is a folder holding config.json)."""
    return _decompose_from_data(read_yaml(path), path)


def decompose_config_from_data(data: dict, source: str | Path) -> DecomposeConfig:
    """A validated `decompose` config from an already parsed mapping (a checkpoint's saved
    config); a problem is a ConfigError naming `source`."""
    return _decompose_from_data(data, source)
