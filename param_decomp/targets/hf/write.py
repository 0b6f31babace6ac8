"""The project's Llama / GPT-2 written as a Hugging Face model folder (`param-decomp export`).

Both directions share one mapping: `config.json` is written through `config_map.CONFIG_KEYS`
(field -> key) and the tensors through `weight_map.weight_sources` (array -> stored tensor)
run backwards: a transposed source is transposed back, GPT-2's q/k/v column ranges are
written into one fused `c_attn`, a stacked norm source is unstacked. Reading the folder back
(`load.load_hf_target`) gives the same arrays bit for bit (S17.8).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from param_decomp.config.schema import GPT2Model, LlamaModel
from param_decomp.targets.hf.config_map import CONFIG_KEYS, SUPPORTED, Family
from param_decomp.targets.hf.errors import HFExportError
from param_decomp.targets.hf.load import path_name
from param_decomp.targets.hf.safetensors_io import SINGLE_FILE
from param_decomp.targets.hf.weight_map import TensorRef, weight_sources


def family_of_model(model: LlamaModel | GPT2Model) -> Family:
    """`gpt2`, `qwen3` (a Llama with q/k norms) or `llama`."""
    if isinstance(model, GPT2Model):
        return "gpt2"
    return "qwen3" if model.qk_norm else "llama"


def export_problems(model: LlamaModel | GPT2Model) -> list[tuple[str, str]]:
    """(config key, message) for what a Hugging Face Llama / GPT-2 cannot compute."""
    if model.logit_soft_cap is not None:
        why = f"{model.logit_soft_cap}: transformers' {model.type} has no logit soft-cap"
        return [("model.logit_soft_cap", why)]
    return []


def config_json(
    model: LlamaModel | GPT2Model, special_ids: dict[str, int | None]
) -> dict[str, Any]:
    """config.json of `model`: the inverse of `config_map.model_config` (the same
    CONFIG_KEYS), with the fixed keys the reader checks and the tokenizer's special ids
    (`eos_token_id`, `bos_token_id`, ...)."""
    family = family_of_model(model)
    keys = CONFIG_KEYS["gpt2" if family == "gpt2" else "llama"]
    derived = {"n_kv_heads": "kv_heads", "head_dim": "head_size"}
    raw: dict[str, Any] = {"architectures": [SUPPORTED[family][0]], "model_type": family}
    for field, key in keys.items():
        raw[key] = getattr(model, derived.get(field, field))
    if isinstance(model, GPT2Model):
        raw |= {
            "activation_function": "gelu_new",
            "n_ctx": model.seq_len,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "add_cross_attention": False,
        }
    else:
        rope: dict[str, Any] = {"rope_theta": model.rope_theta, "rope_type": "default"}
        if model.rope_scaling is not None:
            scaling = model.rope_scaling.model_dump()
            rope |= {"rope_type": scaling.pop("type"), **scaling}
        raw |= {
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "rope_parameters": rope,
        }
        if family == "qwen3":
            raw |= {"use_sliding_window": False}
    raw |= {"dtype": "float32", **special_ids}
    return raw


def _blocks(array: np.ndarray, source: TensorRef | tuple[TensorRef, ...]) -> list[tuple]:
    """(ref, the part of `array` it stores) for a source; a stacked source's rows."""
    if isinstance(source, tuple):
        return [(ref, array[r]) for r, ref in enumerate(source)]
    return [(source, array)]


def hf_tensors(target: nnx.Module, model: LlamaModel | GPT2Model) -> dict[str, np.ndarray]:
    """Stored tensor name -> float32 array: every target array written where `weight_sources`
    reads it from; every stored tensor must be covered exactly once."""
    state = nnx.state(target)
    arrays = {
        path_name(p): np.asarray(jax.device_get(leaf), np.float32)
        for p, leaf in jax.tree_util.tree_leaves_with_path(state)
    }
    sources = weight_sources(family_of_model(model), model, set())
    if set(arrays) != set(sources):  # the model and its mapping disagree: a bug
        raise AssertionError(f"unmapped arrays {set(arrays) ^ set(sources)}")
    tensors: dict[str, np.ndarray] = {}
    written: dict[str, int] = {}
    for path, source in sources.items():
        for ref, block in _blocks(arrays[path], source):
            block = block.T if ref.transpose else block
            out = tensors.setdefault(ref.name, np.zeros(ref.shape, np.float32))
            start, stop = ref.columns or (0, ref.shape[-1])
            if out[..., start:stop].shape != block.shape:
                raise AssertionError(f"{path} -> {ref.name}: shape {block.shape}")
            out[..., start:stop] = block
            written[ref.name] = written.get(ref.name, 0) + block.size
    for name, out in tensors.items():
        if written[name] != out.size:
            raise AssertionError(f"{name}: {written[name]} of {out.size} values written")
    return tensors


def write_model_files(
    target: nnx.Module,
    model: LlamaModel | GPT2Model,
    folder: Path,
    special_ids: dict[str, int | None],
) -> None:
    """config.json and model.safetensors of `target` into `folder` (which must exist)."""
    problems = export_problems(model)
    if problems:
        raise HFExportError(folder, problems)
    raw = config_json(model, special_ids)
    (folder / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    # transformers refuses a safetensors file without this metadata
    weights = folder / SINGLE_FILE
    save_file(hf_tensors(target, model), str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # safetensors creates it owner-only; the folder is meant to be shared
