"""Hugging Face checkpoints load with logits parity against transformers (S17): tiny random
Llama (grouped-query attention, llama3 / linear RoPE scaling, sharded files), Qwen3 (q/k norms,
head_dim != hidden / heads, tied head) and GPT-2 (fused c_attn split) models saved with
`save_pretrained`, compared on a batch of token ids in float32.

Needs the `hf-test` extra (transformers, CPU torch); skipped without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from param_decomp.config.schema import HFTarget
from param_decomp.targets.hf.config_map import hf_target_spec
from param_decomp.targets.hf.load import load_hf_target

torch: Any = None
transformers: Any = None


@pytest.fixture(autouse=True, scope="module")
def _hf_libraries() -> None:
    """torch and transformers imported when this file's tests run, not when pytest collects
    it: at collection they cost 8 s of CPU in every xdist worker, whichever files it runs."""
    global torch, transformers
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")


TOLERANCE = 1e-4  # max |logit difference| in float32 (acceptance)
VOCAB = 97
TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(3, 40))


def _randomize(model: Any, seed: int) -> None:
    """Every parameter random and O(1)-relevant: matrices ~ N(0, 1/fan), norm scales around 1,
    biases small, so a wrong transpose, split, norm or bias shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            elif p.ndim == 1:
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise / min(p.shape) ** 0.5)


def _save(model: Any, folder: Path, **kwargs: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def _logits(target: Any) -> np.ndarray:
    """The target's logits on TOKENS, jitted (one compile beats eager op-by-op dispatch)."""
    graphdef, state = nnx.split(target)
    return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, TOKENS))


def _compare(model: Any, folder: Path) -> float:
    """max |logits(ours) - logits(transformers)| on TOKENS; also checks the logits are not flat."""
    model.eval()
    with torch.no_grad():
        ref = model(torch.tensor(TOKENS)).logits.numpy()
    ours = _logits(load_hf_target(hf_target_spec(HFTarget(hf=str(folder)), None)))
    assert ours.shape == ref.shape == (*TOKENS.shape, VOCAB)
    assert ref.std() > 0.5, "logits too flat for the comparison to mean anything"
    return float(np.abs(ours - ref).max())


def _llama(**kwargs: Any) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        attn_implementation="eager",
        **kwargs,
    )
    model = transformers.LlamaForCausalLM(config)
    _randomize(model, 1)
    return model


LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 20000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 8.0,
    "original_max_position_embeddings": 128,
}  # head size 16: wavelengths 6.3 (kept), 22 and 74 (blended), 256 and up (divided)


def test_llama_gqa_llama3_rope_sharded_files(tmp_path: Path) -> None:
    """S17.2-S17.4: GQA (4 query / 2 K/V heads), llama3 RoPE scaling with every band in use,
    untied head, weights in several files listed by model.safetensors.index.json."""
    model = _llama(rope_parameters=LLAMA3, tie_word_embeddings=False)
    folder = _save(model, tmp_path / "llama", max_shard_size="40KB")
    assert len(list(folder.glob("*.safetensors"))) > 2
    assert (folder / "model.safetensors.index.json").is_file()
    spec = hf_target_spec(HFTarget(hf=str(folder)), None)
    assert spec.model.kv_heads == 2 and spec.model.rope_scaling is not None
    assert _compare(model, folder) <= TOLERANCE


def test_llama_linear_rope_tied_head(tmp_path: Path) -> None:
    model = _llama(
        rope_parameters={"rope_type": "linear", "rope_theta": 5000.0, "factor": 4.0},
        tie_word_embeddings=True,
    )
    folder = _save(model, tmp_path / "llama_tied")
    assert hf_target_spec(HFTarget(hf=str(folder)), None).model.tied_head
    assert _compare(model, folder) <= TOLERANCE


def test_qwen3_qk_norm_head_dim_tied(tmp_path: Path) -> None:
    """Qwen3: per-head q/k RMSNorm before RoPE, head_dim 24 while hidden / heads = 16."""
    config = transformers.Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    model = transformers.Qwen3ForCausalLM(config)
    _randomize(model, 2)
    folder = _save(model, tmp_path / "qwen3")
    spec = hf_target_spec(HFTarget(hf=str(folder)), None)
    assert spec.family == "qwen3" and spec.model.qk_norm and spec.model.head_size == 24
    assert _compare(model, folder) <= TOLERANCE


def test_gpt2_fused_attention_split(tmp_path: Path) -> None:
    """S17.4: c_attn (d, 3d) split by columns into the q, k, v sites, biases likewise."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    model = transformers.GPT2LMHeadModel(config)
    _randomize(model, 3)
    folder = _save(model, tmp_path / "gpt2")
    target = load_hf_target(hf_target_spec(HFTarget(hf=str(folder)), None))
    c_attn = model.transformer.h[1].attn.c_attn.weight.detach().numpy()
    np.testing.assert_array_equal(
        np.asarray(target.site_weights()["layers.1.attn.k"]), c_attn[:, 64:128]
    )
    assert _compare(model, folder) <= TOLERANCE


def test_bf16_files_load_exactly_and_as_bf16(tmp_path: Path) -> None:
    """A BF16 checkpoint reads into float32 exactly; `dtype: bfloat16` holds the weights in
    bf16 and its logits stay near the float32 ones."""
    model = _llama(tie_word_embeddings=False).to(torch.bfloat16)
    folder = _save(model, tmp_path / "llama_bf16")
    f32 = load_hf_target(hf_target_spec(HFTarget(hf=str(folder)), None))
    stored = model.model.layers[0].self_attn.k_proj.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(f32.site_weights()["layers.0.attn.k"]), stored.T)
    bf16 = load_hf_target(hf_target_spec(HFTarget(hf=str(folder), dtype="bfloat16"), None))
    assert bf16.site_weights()["layers.0.attn.k"].dtype == jnp.bfloat16
    full, half = _logits(f32), _logits(bf16)
    assert np.abs(full - half).max() < 0.1 * np.abs(full).max()
