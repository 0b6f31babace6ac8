"""Target construction from its config, keyed by the config's `model.type` (one model class per
YAML kind of the registry, `config/target_kinds.py`; a test checks they match)."""

from __future__ import annotations

from flax import nnx

from param_decomp.config.schema import GPT2Model, LlamaModel, TargetConfig
from param_decomp.config.target_kinds import yaml_kind
from param_decomp.targets.gpt2 import GPT2
from param_decomp.targets.llama import Llama
from param_decomp.targets.resid_mlp import ResidMLP
from param_decomp.targets.tms import TMS

MODEL_CLASSES: dict[str, type[TMS | ResidMLP | Llama | GPT2]] = {
    "tms": TMS,
    "resid_mlp": ResidMLP,
    "llama": Llama,
    "gpt2": GPT2,
}


def build_target(cfg: TargetConfig) -> TMS | ResidMLP | Llama | GPT2:
    """The model of a target config, randomly initialised from its seed."""
    kind = yaml_kind(cfg.model.type)
    return MODEL_CLASSES[kind.model_type](cfg.model, rngs=nnx.Rngs(params=cfg.seed))


def build_lm(model: LlamaModel | GPT2Model, seed: int = 0) -> Llama | GPT2:
    """The LM of an LM config, randomly initialised (its weights are then loaded or trained)."""
    return MODEL_CLASSES[model.type](model, rngs=nnx.Rngs(params=seed))
