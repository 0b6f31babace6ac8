"""Read and validate config YAML; every problem becomes a ConfigError naming file and key.

All checks that can fail on the config alone (schema, loss list, target file, mesh vs. device
count) run here, before anything is built or compiled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel

from param_decomp.config.errors import ConfigError, format_validation_error
from param_decomp.config.schema import DecomposeConfig, Mesh, TargetConfig


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML would silently keep only the last one."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict:
    """Explicit keys must be unique; keys brought in by a `<<:` merge may be overridden."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # unhashable key: the normal constructor reports it
            break
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """'line L, column C: problem (while parsing X that starts at line K)' from PyYAML's marks."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} that starts at line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"YAML syntax error: {problem}"


def read_yaml(path: str | Path) -> dict:
    """The file's top-level mapping; unreadable file, bad YAML or a non-mapping is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(path, [("", "is a folder, not a YAML file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(path, [("", f"cannot read file: {reason}")]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ConfigError(path, [("", _yaml_problem(err))]) from None
    if data is None:
        raise ConfigError(path, [("", "file is empty; expected a mapping of `key: value` entries")])
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(
            path, [("", f"top level must be a mapping of `key: value` entries, got a {kind}")]
        )
    return data


# ----------------------------------------------------------------------------- targets


def _target_from_data(data: dict, path: str | Path) -> TargetConfig:
    try:
        return TargetConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(path, format_validation_error(err, TargetConfig, data=data)) from None


def load_target_config(path: str | Path) -> TargetConfig:
    """Validated `train-target` config."""
    return _target_from_data(read_yaml(path), path)


# ----------------------------------------------------------------------------- decompositions


def _resolve_target(target: str, config_path: Path) -> Path | None:
    """The target YAML: relative to the working directory first, then to the config's folder."""
    given = Path(target).expanduser()
    candidates = [given] if given.is_absolute() else [given, config_path.parent / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    return None


def _decompose_from_data(data: dict, path: str | Path) -> DecomposeConfig:
    from param_decomp.losses.registry import loss_list_adapter

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
        adapter = loss_list_adapter()
        try:
            terms = adapter.validate_python(raw_losses)
        except pydantic.ValidationError as err:
            problems += format_validation_error(err, adapter, prefix=("losses",), data=raw_losses)

    target = data.get("target")
    resolved: Path | None = None
    if isinstance(target, str) and target:
        resolved = _resolve_target(target, Path(path))
        if resolved is None:
            problems.append(
                (
                    "target",
                    f"file {target!r} not found (looked in the working directory and "
                    f"in {str(Path(path).parent) or '.'}/)",
                )
            )

    if problems or cfg is None:
        raise ConfigError(path, problems or [("", "invalid config")])
    return cfg.model_copy(update={"losses": terms, "target": str(resolved)})


def load_decompose_config(path: str | Path) -> DecomposeConfig:
    """Validated `decompose` config: `losses` holds term objects, `target` an existing path."""
    return _decompose_from_data(read_yaml(path), path)


def load_any_config(path: str | Path) -> BaseModel:
    """A target config (has `model`; a `llama` model is pretrained, so it is a pretrain config)
    or a decompose config (has `decomposition`)."""
    data = read_yaml(path)
    if "model" in data:
        model = data["model"]
        if isinstance(model, dict) and model.get("type") == "llama":
            from param_decomp.config.pretrain_schema import load_pretrain_config

            return load_pretrain_config(path)
        return _target_from_data(data, path)
    if "decomposition" in data:
        return _decompose_from_data(data, path)
    raise ConfigError(
        path,
        [
            (
                "",
                "cannot tell the config kind: a target config has a `model:` block, "
                "a decomposition config a `decomposition:` block",
            )
        ],
    )


# ----------------------------------------------------------------------------- mesh


def resolve_mesh_shape(mesh: Mesh, n_devices: int) -> dict[str, int]:
    """Axis sizes with `data: -1` resolved to the devices fsdp and tensor leave (at least 1)."""
    other = mesh.fsdp * mesh.tensor
    data = mesh.data if mesh.data != -1 else max(n_devices // other, 1)
    return {"data": data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}


def check_mesh(cfg: DecomposeConfig, n_devices: int, file: str | Path) -> None:
    """S13.1, before any compile: mesh product = devices, batch % (data*fsdp), C % tensor."""
    shape = resolve_mesh_shape(cfg.mesh, n_devices)
    problems: list[tuple[str, str]] = []
    product = math.prod(shape.values())
    if product != n_devices:
        sizes = " x ".join(f"{axis} {size}" for axis, size in shape.items())
        hint = (
            f"; fsdp x tensor = {cfg.mesh.fsdp * cfg.mesh.tensor} must divide the device count"
            if cfg.mesh.data == -1
            else "; set data: -1 to use the remaining devices"
        )
        problems.append(("mesh", f"{sizes} = {product} devices, but {n_devices} are visible{hint}"))
    batch_shards = shape["data"] * shape["fsdp"]
    batches = (("train.batch_size", cfg.train.batch_size), ("eval.batch_size", cfg.eval.batch_size))
    for key, size in batches:
        if size % batch_shards:
            problems.append(
                (key, f"{size} is not divisible by data x fsdp = {batch_shards} (the batch shards)")
            )
    C = cfg.decomposition.C
    if C % shape["tensor"]:
        msg = f"{C} is not divisible by the tensor axis size {shape['tensor']}"
        problems.append(("decomposition.C", msg))
    if problems:
        raise ConfigError(file, problems)
