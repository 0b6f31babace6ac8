"""Target construction from its config, keyed by the config's `model.type`."""

from __future__ import annotations

from flax import nnx

from param_decomp.config.schema import (
    GPT2Model,
    LlamaModel,
    ResidMLPModel,
    TargetConfig,
    TMSModel,
)
from param_decomp.targets.gpt2 import GPT2
from param_decomp.targets.llama import Llama
from param_decomp.targets.resid_mlp import ResidMLP
from param_decomp.targets.tms import TMS


def build_target(cfg: TargetConfig) -> TMS | ResidMLP | Llama | GPT2:
    rngs = nnx.Rngs(params=cfg.seed)
    model = cfg.model
    if isinstance(model, TMSModel):
        return TMS(model, rngs=rngs)
    if isinstance(model, ResidMLPModel):
        return ResidMLP(model, rngs=rngs)
    if isinstance(model, LlamaModel):
        return Llama(model, rngs=rngs)
    if isinstance(model, GPT2Model):
        return GPT2(model, rngs=rngs)
    raise TypeError(f"unknown target model {type(model).__name__}")


def build_lm(model: LlamaModel | GPT2Model, seed: int = 0) -> Llama | GPT2:
    """The LM of an LM config, randomly initialised (its weights are then loaded or trained)."""
    rngs = nnx.Rngs(params=seed)
    return GPT2(model, rngs=rngs) if isinstance(model, GPT2Model) else Llama(model, rngs=rngs)
