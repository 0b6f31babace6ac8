"""A Hugging Face `config.json` as the project's LM config (S17.1, S17.2).

Llama and Qwen3 become a `LlamaModel` (grouped-query attention, head size, RoPE base and
scaling, RMSNorm eps, tied head; Qwen3 adds the q/k norms), GPT-2 a `GPT2Model`. Anything the
project's models would compute differently (biases on Llama projections, another activation,
sliding-window layers, another RoPE type) is refused with the key at fault, never ignored.
Both config.json layouts are read: `rope_theta` + `rope_scaling` (transformers 4) and
`rope_parameters` (transformers 5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic

from param_decomp.config.errors import format_validation_error
from param_decomp.config.loading import with_folder_tokenizer
from param_decomp.config.schema import (
    GPT2Model,
    HFTarget,
    LinearRopeScaling,
    Llama3RopeScaling,
    LlamaModel,
    TextData,
)
from param_decomp.config.target_kinds import HF_KINDS
from param_decomp.targets.hf.errors import HFCheckpointError

Family = Literal["llama", "qwen3", "gpt2"]

# model_type -> the architectures (config.json `architectures`) it is read as: the hf kinds of
# the target registry (config/target_kinds.py)
SUPPORTED: dict[str, tuple[str, ...]] = {t: kind.architectures for t, kind in HF_KINDS.items()}
# Decomposition windows of an hf target when `data.seq_len` is omitted (capped by the model's
# positions): a published model's context (often 8k-128k) is far longer than a decomposition
# needs per step.
HF_WINDOW = 128
ROPE_TYPES = ("default", "linear", "llama3")
# the project's LM config field -> the config.json key it is read from (for error messages)
CONFIG_KEYS = {
    "llama": {
        "vocab_size": "vocab_size",
        "d_model": "hidden_size",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "head_dim": "head_dim",
        "d_mlp": "intermediate_size",
        "n_layers": "num_hidden_layers",
        "seq_len": "max_position_embeddings",
        "tied_head": "tie_word_embeddings",
        "rope_theta": "rope_theta",
        "rms_norm_eps": "rms_norm_eps",
    },
    "gpt2": {
        "vocab_size": "vocab_size",
        "d_model": "n_embd",
        "n_heads": "n_head",
        "d_mlp": "n_inner",
        "n_layers": "n_layer",
        "seq_len": "n_positions",
        "tied_head": "tie_word_embeddings",
        "layer_norm_eps": "layer_norm_epsilon",
    },
}
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both the tanh approximation


def supported_list() -> str:
    return ", ".join(f"{t} ({' / '.join(a)})" for t, a in SUPPORTED.items())


@dataclass(frozen=True)
class HFTargetSpec:
    """An `{hf: folder}` target resolved: its family and LM config, the dtype its weights are
    held in, and the text the decomposition reads (what a pretrain config is to a trained LM)."""

    folder: Path
    family: Family
    model: LlamaModel | GPT2Model
    dtype: Literal["float32", "bfloat16"]
    data: TextData

    @property
    def seq_len(self) -> int:
        """Tokens per decomposition window: data.seq_len, else HF_WINDOW capped by the model."""
        return self.data.seq_len or min(HF_WINDOW, self.model.seq_len)


class _Reader:
    """config.json values by key; every problem is collected, then raised together."""

    def __init__(self, raw: dict[str, Any], path: Path) -> None:
        self.raw, self.path = raw, path
        self.problems: list[tuple[str, str]] = []

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        if key not in self.raw or self.raw[key] is None:
            if required:
                self.problems.append((key, "required key missing"))
            return default
        return self.raw[key]

    def refuse(self, key: str, value: Any, why: str) -> None:
        self.problems.append((key, f"{value!r} is not supported: {why}"))

    def check(self) -> None:
        if self.problems:
            raise HFCheckpointError(self.path, self.problems)


def read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = "no config.json (a Hugging Face model folder holds config.json and *.safetensors)"
        raise HFCheckpointError(folder, [("", msg)]) from None
    except (OSError, ValueError) as err:
        raise HFCheckpointError(path, [("", f"not readable JSON ({err})")]) from None
    if not isinstance(raw, dict):
        raise HFCheckpointError(path, [("", "must hold a JSON object of config keys")])
    return raw


def family_of(raw: dict[str, Any], path: Path) -> Family:
    """The family from `model_type`, else from `architectures`; anything else is an error that
    lists the supported ones."""
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or []
    if model_type in SUPPORTED:
        return model_type
    if model_type is None:
        for family, names in SUPPORTED.items():
            if any(a in names for a in architectures):
                return family  # type: ignore[return-value]
    shown = f"model_type {model_type!r}, architectures {architectures}"
    msg = f"{shown} is not supported; supported: {supported_list()}"
    raise HFCheckpointError(path, [("model_type", msg)])


def _rope(keys: _Reader) -> tuple[float, LinearRopeScaling | Llama3RopeScaling | None]:
    """(base, scaling) from `rope_parameters`, or from `rope_theta` + `rope_scaling`."""
    params = keys.get("rope_parameters") or keys.get("rope_scaling") or {}
    key = "rope_parameters" if keys.get("rope_parameters") else "rope_scaling"
    theta = float(params.get("rope_theta", keys.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ROPE_TYPES:
        keys.refuse(f"{key}.rope_type", kind, f"the RoPE types read are {list(ROPE_TYPES)}")
        return theta, None
    fields = ("factor",)
    if kind == "llama3":
        fields += ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    given = {f: params[f] for f in fields if f in params}
    if "factor" not in given:
        keys.problems.append((f"{key}.factor", "required key missing"))
        return theta, None
    scaling_type = LinearRopeScaling if kind == "linear" else Llama3RopeScaling
    try:
        return theta, scaling_type(type=kind, **given)
    except pydantic.ValidationError as err:
        for loc, msg in format_validation_error(err, scaling_type):
            keys.problems.append((f"{key}.{loc}" if loc else key, msg))
        return theta, None


def _llama(keys: _Reader, family: Family) -> dict[str, Any]:
    if keys.get("hidden_act", "silu") != "silu":
        keys.refuse("hidden_act", keys.get("hidden_act"), "the MLP is SwiGLU (silu)")
    for flag in ("attention_bias", "mlp_bias"):
        if keys.get(flag, False):
            keys.refuse(flag, True, "the projections are sites without biases")
    if keys.get("use_sliding_window", False):
        keys.refuse("use_sliding_window", True, "every layer attends to all earlier positions")
    layer_types = keys.get("layer_types") or []
    if any(kind != "full_attention" for kind in layer_types):
        keys.refuse("layer_types", sorted(set(layer_types)), "only full_attention layers")
    d_model = keys.get("hidden_size", required=True)
    n_heads = keys.get("num_attention_heads", required=True)
    kv_heads = keys.get("num_key_value_heads", n_heads)
    whole = isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0
    default_head = 128 if family == "qwen3" else (d_model // n_heads if whole else None)
    head_dim = keys.get("head_dim", default_head)
    if whole and isinstance(kv_heads, int) and kv_heads > 0 and n_heads % kv_heads:
        keys.problems.append(
            ("num_key_value_heads", f"{kv_heads} must divide num_attention_heads ({n_heads})")
        )
    if isinstance(head_dim, int) and head_dim % 2:
        keys.problems.append(("head_dim", f"{head_dim} must be even (RoPE rotates pairs)"))
    theta, scaling = _rope(keys)
    return {
        "type": "llama",
        "vocab_size": keys.get("vocab_size", required=True),
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": kv_heads,
        "head_dim": head_dim,
        "d_mlp": keys.get("intermediate_size", required=True),
        "n_layers": keys.get("num_hidden_layers", required=True),
        "seq_len": keys.get("max_position_embeddings", 2048),
        "tied_head": keys.get("tie_word_embeddings", False),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "rms_norm_eps": keys.get("rms_norm_eps", 1e-6),
        "qk_norm": family == "qwen3",
    }


def _gpt2(keys: _Reader) -> dict[str, Any]:
    activation = keys.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        keys.refuse("activation_function", activation, f"the MLP uses {GPT2_ACTIVATIONS[0]}")
    if keys.get("scale_attn_by_inverse_layer_idx", False):
        keys.refuse("scale_attn_by_inverse_layer_idx", True, "scores are scaled by head size only")
    if not keys.get("scale_attn_weights", True):
        keys.refuse("scale_attn_weights", False, "scores are scaled by 1/sqrt(head size)")
    if keys.get("add_cross_attention", False):
        keys.refuse("add_cross_attention", True, "a decoder-only LM has no cross-attention")
    d_model = keys.get("n_embd", required=True)
    n_heads = keys.get("n_head", required=True)
    if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads > 0 and d_model % n_heads:
        keys.problems.append(("n_head", f"{n_heads} must divide n_embd ({d_model})"))
    return {
        "type": "gpt2",
        "vocab_size": keys.get("vocab_size", required=True),
        "d_model": d_model,
        "n_heads": n_heads,
        "d_mlp": keys.get("n_inner") or (4 * d_model if isinstance(d_model, int) else None),
        "n_layers": keys.get("n_layer", required=True),
        "seq_len": keys.get("n_positions", 1024),
        "tied_head": keys.get("tie_word_embeddings", True),
        "layer_norm_eps": keys.get("layer_norm_epsilon", 1e-5),
    }


def model_config(raw: dict[str, Any], path: Path) -> tuple[Family, LlamaModel | GPT2Model]:
    """(family, the project's LM config) of a parsed config.json at `path`."""
    family = family_of(raw, path)
    keys = _Reader(raw, path)
    fields = _gpt2(keys) if family == "gpt2" else _llama(keys, family)
    keys.check()
    model_type = GPT2Model if family == "gpt2" else LlamaModel
    try:
        return family, model_type(**fields)
    except pydantic.ValidationError as err:
        names = CONFIG_KEYS["gpt2" if family == "gpt2" else "llama"]
        problems = [
            (names.get(key, key), msg) for key, msg in format_validation_error(err, model_type)
        ]
        raise HFCheckpointError(path, problems) from None


def hf_target_spec(target: HFTarget, data: TextData | None) -> HFTargetSpec:
    """The resolved target of `target: {hf: folder}` with the decomposition's `data:` block
    (its tokenizer, when the block names none, the folder's tokenizer.json if it has one)."""
    folder = Path(target.hf)
    family, model = model_config(read_config_json(folder), folder / "config.json")
    data = with_folder_tokenizer(data, folder)
    return HFTargetSpec(folder, family, model, target.dtype, data or TextData())


def data_problems(spec: HFTargetSpec) -> list[tuple[str, str]]:
    """(decomposition config key, message) for a `data:` block the model cannot read: more
    tokenizer ids than embedding rows, or windows longer than the model's positions."""
    from param_decomp.config.pretrain_schema import tokenizer_file_key, tokenizer_vocab
    from param_decomp.text.tokenizers import DataError

    problems: list[tuple[str, str]] = []
    try:
        vocab = tokenizer_vocab(spec.data.tokenizer)
    except DataError as err:
        return [(tokenizer_file_key(spec.data.tokenizer), f"{err.message} ({err.path})")]
    if vocab > spec.model.vocab_size:
        problems.append(
            (
                "data.tokenizer",
                f"has {vocab} tokens, more than the model's vocab_size {spec.model.vocab_size} "
                "(config.json): its ids would index past the embedding",
            )
        )
    if spec.seq_len > spec.model.seq_len:
        key = "n_positions" if spec.family == "gpt2" else "max_position_embeddings"
        msg = f"{spec.seq_len} is longer than the model's {spec.model.seq_len} positions ({key})"
        problems.append(("data.seq_len", msg))
    return problems
