"""The tiny targets of the target-kind matrix (`test_target_matrix.py`): one per kind of the
registry (`config/target_kinds.py`), each with the decomposition config the jobs run on.

Toys are trained by `train-target`, the project's LMs by `pretrain` (1-2 steps: the jobs are
tested, not the models); the Hugging Face kinds are the pretrained LMs exported by
`param-decomp export` (a Llama with q/k norms is written as Qwen3), so every kind is made by
the project's own commands and no folder is written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

LM = {"vocab_size": 256, "d_model": 8, "n_heads": 2, "d_mlp": 16, "n_layers": 1, "seq_len": 8}
LM_DATA = {"tokenizer": "byte", "val_fraction": 0.1, "max_val_windows": 4}
LM_TRAIN = {"steps": 1, "batch_size": 4, "optimizer": {"lr": 1e-3}, "log_every": 1}
TOY_TRAIN = {"steps": 2, "batch_size": 8, "optimizer": {"lr": 1e-3}, "log_every": 1}

# registry name -> (target YAML body or None, the kind whose export is this folder, sites)
TARGETS: dict[str, tuple[dict[str, Any] | None, str | None, list[str]]] = {
    "tms": (
        {
            "model": {"type": "tms", "n_features": 5, "n_hidden": 2},
            "data": {"feature_probability": 0.2},
            "train": TOY_TRAIN,
        },
        None,
        ["linear1", "linear2"],
    ),
    "resid_mlp": (
        {
            "model": {"type": "resid_mlp", "n_features": 6, "d_embed": 8, "d_mlp": 4},
            "data": {"feature_probability": 0.2},
            "train": TOY_TRAIN,
        },
        None,
        ["layers.0.mlp_in", "layers.0.mlp_out"],
    ),
    "llama": (
        {
            "model": {"type": "llama", **LM},
            "data": LM_DATA,
            "train": {**LM_TRAIN, "eval_every": 1},
        },
        None,
        ["layers.0.mlp.up", "layers.0.attn.v"],
    ),
    "gpt2": (
        {"model": {"type": "gpt2", **LM}, "data": LM_DATA, "train": {**LM_TRAIN, "eval_every": 1}},
        None,
        ["layers.0.mlp.fc", "layers.0.attn.q"],
    ),
    "hf:llama": (None, "llama", ["layers.0.mlp.up", "layers.0.attn.v"]),
    "hf:gpt2": (None, "gpt2", ["layers.0.mlp.fc", "layers.0.attn.q"]),
    "hf:qwen3": (None, "qwen3", ["layers.0.mlp.down", "layers.0.attn.k"]),
}
# a pretrained Llama with Qwen3's q/k norms: exported, it is the hf:qwen3 target
QWEN3 = {
    "model": {"type": "llama", **LM, "qk_norm": True},
    "data": LM_DATA,
    "train": {**LM_TRAIN, "eval_every": 1},
}


def slug(name: str) -> str:
    return name.replace(":", "_")


def write_target_yaml(folder: Path, name: str, body: dict[str, Any]) -> Path:
    path = folder / f"{slug(name)}_target.yaml"
    path.write_text(yaml.safe_dump({"run_name": f"{slug(name)}_target", **body}))
    return path


def write_decompose_yaml(folder: Path, name: str, target: str | dict, lm: bool) -> Path:
    """Two steps, a checkpoint after each (so `--resume` has one to continue from)."""
    recon: dict[str, Any] = {"type": "stochastic_recon", "coeff": 1.0}
    config: dict[str, Any] = {
        "run_name": slug(name),
        "target": target,
        "decomposition": {
            "C": 2,
            "sites": TARGETS[name][2],
            "ci_function": {"type": "global_mlp", "hidden": [4]},
        },
        "losses": [
            {"type": "faithfulness", "coeff": 1.0},
            recon | ({"distance": "kl"} if lm else {}),
        ],
        "train": {"steps": 2, "batch_size": 4, "optimizer": {"lr": 1e-3}, "log_every": 1},
        "eval": {"n_batches": 1, "batch_size": 4, "figures": False, "pgd_steps": 0},
        "checkpointing": {"every": 1, "keep": 3},
    }
    if isinstance(target, dict):
        config["data"] = {"seq_len": LM["seq_len"], "max_val_windows": 4}
    path = folder / f"{slug(name)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
