"""The target a decomposition config names, as a config: its YAML, or an hf folder's spec.

Shared by the decompose job, `param-decomp plan` and the memory check, which all need the
target's shapes before anything is built; `target_kind` is its kind in the registry
(`config/target_kinds.py`), which every job asks what the target is.
"""

from __future__ import annotations

from pydantic import BaseModel

from param_decomp.config.errors import ConfigError
from param_decomp.config.schema import DecomposeConfig, HFTarget
from param_decomp.config.target_kinds import HF_KINDS, TargetKind, yaml_kind
from param_decomp.runconfig.any_config import load_any_config
from param_decomp.targets.hf.config_map import HFTargetSpec, data_problems, hf_target_spec
from param_decomp.targets.hf.load import checked_sources


def resolve_target_config(cfg: DecomposeConfig, config_path: str) -> BaseModel | HFTargetSpec:
    """The target's own config: its YAML file, or for `target: {hf: folder}` the folder's
    config.json as an LM config with the decomposition's text `data:` block (S17.1), its
    tensors checked from their headers (S17.6)."""
    if isinstance(cfg.target, HFTarget):
        spec = hf_target_spec(cfg.target, cfg.data)
        problems = data_problems(spec)
        if problems:
            raise ConfigError(config_path, problems)
        checked_sources(spec)
        return spec
    return load_any_config(cfg.target)


def target_kind(target_cfg: BaseModel | HFTargetSpec) -> TargetKind:
    """The registry's kind of a resolved target config (what `resolve_target_config` returns):
    an hf folder's by its family, a YAML's by its `model.type`."""
    if isinstance(target_cfg, HFTargetSpec):
        return HF_KINDS[target_cfg.family]
    return yaml_kind(getattr(getattr(target_cfg, "model", None), "type", None))
