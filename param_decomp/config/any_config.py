"""Any config file by its kind: a target, a pretrained LM's target or a decomposition.

Above both `loading.py` and `pretrain_schema.py` (which imports `loading`), so the dispatch
between them closes no import circle.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import (
    _decompose_from_data,
    _target_from_data,
    config_boundary,
    read_yaml,
)
from param_decomp.config.pretrain_schema import load_pretrain_config


@config_boundary
def load_any_config(path: str | Path) -> BaseModel:
    """A target config (has `model`; a `llama` model is pretrained, so it is a pretrain config)
    or a decompose config (has `decomposition`)."""
    data = read_yaml(path)
    if "model" in data:
        model = data["model"]
        if isinstance(model, dict) and model.get("type") == "llama":
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
