"""Tiny Hugging Face-format Llama folders written with numpy alone (no torch, no transformers):
config.json as transformers 5 writes it and the tensors under their Hugging Face names, so the
loader's error paths and the decomposition run are tested wherever the test extra is missing.

Importable from any test: pytest puts tests/ (the folder of the root conftest.py) on sys.path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 260,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "dtype": "float32",
}


def llama_tensors(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors of a LlamaForCausalLM of `config`, torch layout ((out, in) weights)."""
    rng = np.random.default_rng(seed)
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    dh = config["head_dim"]
    q, kv = config["num_attention_heads"] * dh, config["num_key_value_heads"] * dh

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": 1 + w(d) / 4}
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = w(v, d)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj": (q, d),
            "self_attn.k_proj": (kv, d),
            "self_attn.v_proj": (kv, d),
            "self_attn.o_proj": (d, q),
            "mlp.gate_proj": (f, d),
            "mlp.up_proj": (f, d),
            "mlp.down_proj": (d, f),
        }
        tensors.update({f"{p}{m}.weight": w(*s) for m, s in shapes.items()})
        tensors[f"{p}input_layernorm.weight"] = 1 + w(d) / 4
        tensors[f"{p}post_attention_layernorm.weight"] = 1 + w(d) / 4
    return tensors


def write_hf_folder(
    folder: Path, config: dict[str, Any], tensors: dict[str, np.ndarray], n_files: int = 1
) -> Path:
    """config.json and the tensors: model.safetensors, or `n_files` shards with an index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if n_files == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    names = sorted(tensors)
    weight_map = {}
    for k in range(n_files):
        file = f"model-{k + 1:05d}-of-{n_files:05d}.safetensors"
        part = names[k::n_files]
        save_file({n: tensors[n] for n in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def write_llama(folder: Path, seed: int = 0, n_files: int = 1, **overrides: Any) -> Path:
    """A random tiny GQA Llama folder; `overrides` change config.json keys."""
    config = {**LLAMA_CONFIG, **overrides}
    return write_hf_folder(folder, config, llama_tensors(config, seed), n_files)
