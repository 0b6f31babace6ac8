"""Target construction from its config, keyed by the config's `model.type`."""

from __future__ import annotations

from flax import nnx

from param_decomp.config.schema import ResidMLPModel, TargetConfig, TMSModel
from param_decomp.targets.resid_mlp import ResidMLP
from param_decomp.targets.tms import TMS


def build_target(cfg: TargetConfig) -> TMS | ResidMLP:
    rngs = nnx.Rngs(params=cfg.seed)
    model = cfg.model
    if isinstance(model, TMSModel):
        return TMS(model, rngs=rngs)
    if isinstance(model, ResidMLPModel):
        return ResidMLP(model, rngs=rngs)
    raise TypeError(f"unknown target model {type(model).__name__}")
