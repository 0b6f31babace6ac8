"""Which stored Hugging Face tensor fills each array of the project's Llama / GPT-2 (S17.4).

Every array of the target's state (by its path, e.g. `layers.0.attn_q`) gets a `TensorRef`, or
a tuple of them stacked along a new first axis (the per-layer norm scales). Project sites are
W stored (d_in, d_out): a torch `nn.Linear` weight is (out, in), so Llama and Qwen3 projections
are transposed; GPT-2's `Conv1D` weights are already (in, out). GPT-2's fused `c_attn` (d, 3d)
is split by columns: q = [0, d), k = [d, 2d), v = [2d, 3d), and its bias the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from param_decomp.config.schema import GPT2Model, LlamaModel
from param_decomp.targets.hf.config_map import Family


@dataclass(frozen=True)
class TensorRef:
    """A stored tensor `name` of shape `shape`, transposed into place (`transpose`) or only the
    column range [start, stop) of its last axis (`columns`)."""

    name: str
    shape: tuple[int, ...]
    transpose: bool = False
    columns: tuple[int, int] | None = None


Source = TensorRef | tuple[TensorRef, ...]

# Stored tensors no array needs and that are safe to skip: RoPE tables some converters saved,
# GPT-2's causal-mask buffers, and a head stored beside a tied embedding.
IGNORED = {
    "llama": (r"(^|\.)rotary_emb\.inv_freq$",),
    "qwen3": (r"(^|\.)rotary_emb\.inv_freq$",),
    "gpt2": (r"(^|\.)attn\.bias$", r"(^|\.)attn\.masked_bias$"),
}


def _prefix(names: set[str], with_head: str, bare: str) -> str:
    """`model.` / `transformer.` for a *ForCausalLM save, '' for a bare base-model save."""
    return "" if bare in names and with_head + bare not in names else with_head


def llama_sources(cfg: LlamaModel, names: set[str]) -> dict[str, Source]:
    """Llama and Qwen3 (`model.layers.{i}.self_attn.q_proj.weight`, ...)."""
    p = _prefix(names, "model.", "embed_tokens.weight")
    d, f, v = cfg.d_model, cfg.d_mlp, cfg.vocab_size
    q_width, kv_width, dh = cfg.n_heads * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.head_size
    sources: dict[str, Source] = {
        "embed": TensorRef(f"{p}embed_tokens.weight", (v, d)),
        "final_norm": TensorRef(f"{p}norm.weight", (d,)),
    }
    if not cfg.tied_head:
        sources["unembed"] = TensorRef("lm_head.weight", (v, d), transpose=True)
    linear = {  # site kind -> (module, stored (out, in))
        "attn_q": ("self_attn.q_proj", (q_width, d)),
        "attn_k": ("self_attn.k_proj", (kv_width, d)),
        "attn_v": ("self_attn.v_proj", (kv_width, d)),
        "attn_o": ("self_attn.o_proj", (d, q_width)),
        "mlp_gate": ("mlp.gate_proj", (f, d)),
        "mlp_up": ("mlp.up_proj", (f, d)),
        "mlp_down": ("mlp.down_proj", (d, f)),
    }
    for i in range(cfg.n_layers):
        layer = f"{p}layers.{i}."
        for kind, (module, shape) in linear.items():
            sources[f"layers.{i}.{kind}"] = TensorRef(f"{layer}{module}.weight", shape, True)
        sources[f"norms.{i}"] = (
            TensorRef(f"{layer}input_layernorm.weight", (d,)),
            TensorRef(f"{layer}post_attention_layernorm.weight", (d,)),
        )
        if cfg.qk_norm:
            sources[f"qk_norms.{i}"] = (
                TensorRef(f"{layer}self_attn.q_norm.weight", (dh,)),
                TensorRef(f"{layer}self_attn.k_norm.weight", (dh,)),
            )
    return sources


def gpt2_sources(cfg: GPT2Model, names: set[str]) -> dict[str, Source]:
    """GPT-2 (`transformer.h.{i}.attn.c_attn.weight`, ...); Conv1D weights are (in, out)."""
    p = _prefix(names, "transformer.", "wte.weight")
    d, f, v = cfg.d_model, cfg.d_mlp, cfg.vocab_size
    sources: dict[str, Source] = {
        "embed": TensorRef(f"{p}wte.weight", (v, d)),
        "positions": TensorRef(f"{p}wpe.weight", (cfg.seq_len, d)),
        "final_norm": (TensorRef(f"{p}ln_f.weight", (d,)), TensorRef(f"{p}ln_f.bias", (d,))),
    }
    if not cfg.tied_head:
        sources["unembed"] = TensorRef("lm_head.weight", (v, d), transpose=True)
    split = {"attn_q": (0, d), "attn_k": (d, 2 * d), "attn_v": (2 * d, 3 * d)}
    whole = {  # site kind -> (module, stored (in, out))
        "attn_o": ("attn.c_proj", (d, d)),
        "mlp_fc": ("mlp.c_fc", (d, f)),
        "mlp_proj": ("mlp.c_proj", (f, d)),
    }
    for i in range(cfg.n_layers):
        layer = f"{p}h.{i}."
        for kind, cols in split.items():
            sources[f"layers.{i}.{kind}"] = TensorRef(
                f"{layer}attn.c_attn.weight", (d, 3 * d), columns=cols
            )
            sources[f"biases.{i}.{kind}"] = TensorRef(
                f"{layer}attn.c_attn.bias", (3 * d,), columns=cols
            )
        for kind, (module, shape) in whole.items():
            sources[f"layers.{i}.{kind}"] = TensorRef(f"{layer}{module}.weight", shape)
            sources[f"biases.{i}.{kind}"] = TensorRef(f"{layer}{module}.bias", shape[1:])
        sources[f"norms.{i}"] = tuple(
            TensorRef(f"{layer}{norm}.{part}", (d,))
            for norm in ("ln_1", "ln_2")
            for part in ("weight", "bias")
        )
    return sources


def weight_sources(
    family: Family, cfg: LlamaModel | GPT2Model, names: set[str]
) -> dict[str, Source]:
    """Target state path -> its source among the stored tensor `names`."""
    if family == "gpt2":
        assert isinstance(cfg, GPT2Model)
        return gpt2_sources(cfg, names)
    assert isinstance(cfg, LlamaModel)
    return llama_sources(cfg, names)


def unused_tensors(
    family: Family, tied_head: bool, sources: dict[str, Source], names: set[str]
) -> list[str]:
    """Stored tensors no array reads and none of IGNORED (nor a head beside a tied embedding)
    covers: a sign of a variant the mapping does not know (biases, extra norms, ...)."""
    used = {
        ref.name
        for source in sources.values()
        for ref in (source if isinstance(source, tuple) else (source,))
    }
    patterns = [re.compile(p) for p in IGNORED[family]]
    if tied_head:
        patterns.append(re.compile(r"^lm_head\.weight$"))
    return sorted(n for n in names - used if not any(p.search(n) for p in patterns))
