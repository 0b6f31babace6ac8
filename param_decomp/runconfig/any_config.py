"""Any config file by its kind: a target, a pretrained LM's target or a decomposition (the
target kinds are `config/target_kinds.py`'s registry).

Above `config/loading.py`, `config/pretrain_schema.py` and `decompose.py` (which validates the
loss list through `losses/`), so the dispatch between them closes no import circle.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import _target_from_data, config_boundary, read_yaml
from param_decomp.config.pretrain_schema import load_pretrain_config
from param_decomp.config.target_kinds import refuse, yaml_kind
from param_decomp.runconfig.decompose import _decompose_from_data


@config_boundary
def load_any_config(path: str | Path) -> BaseModel:
    """A target config (has `model`: a toy's train-target config, or for an LM kind of the
    registry a pretrain config) or a decompose config (has `decomposition`). An unknown
    `model.type` is a ConfigError naming the registered ones."""
    data = read_yaml(path)
    if "model" in data:
        model = data["model"]
        if not isinstance(model, dict):  # the schema names the key and what it must be
            return _target_from_data(data, path)
        if yaml_kind(model.get("type"), path).source == "pretrained":
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


def load_job_target(path: str | Path, job: str) -> BaseModel:
    """The target YAML that `train-target` or `pretrain` (`job`) trains, refused in one sentence
    (ConfigError, nothing written) when the job does not apply to its kind."""
    cfg = load_any_config(path)
    if not hasattr(cfg, "model"):
        raise ConfigError(path, [("", f"`{job}` reads a target config (with a `model:` block)")])
    refuse(yaml_kind(cfg.model.type, path), job, path)
    return cfg
