"""`param-decomp pretrain`: a tiny Llama learns the shipped corpus; metrics, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from param_decomp.config.errors import ConfigError
from param_decomp.config.pretrain_schema import PretrainConfig, load_pretrain_config
from param_decomp.data.pipeline import fixed_windows
from param_decomp.data.token_store import prepare_tokens
from param_decomp.jobs.pretrain import (
    evaluate,
    load_pretrained,
    make_objective,
    pretrain,
)
from param_decomp.targets.build import build_lm
from param_decomp.text.tokenizers import ByteTokenizer
from param_decomp.train.checkpoint import restore_data_state

REPO = Path(__file__).resolve().parents[2]

BYTES = ByteTokenizer()
BYTES_PER_TOKEN = jnp.asarray(BYTES.bytes_per_token())


def _raw(**overrides: object) -> dict:
    raw: dict = {
        "run_name": "llama_test",
        "seed": 0,
        "model": {
            "type": "llama",
            "vocab_size": 256,
            "d_model": 32,
            "n_heads": 2,
            "d_mlp": 64,
            "n_layers": 1,
            "seq_len": 32,
        },
        "data": {"max_val_windows": 64},
        "train": {
            "steps": 150,
            "batch_size": 16,
            "optimizer": {"lr": 1e-2, "grad_clip_norm": 1.0},
            "log_every": 50,
            "eval_every": 75,
        },
    }
    raw.update(overrides)
    return raw


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_short_pretrain_learns_and_checkpoint_restores(tmp_path: Path) -> None:
    # 60 steps (the bf16 test's fp32 twin's step program): seeds 0-2 measured val loss
    # 1.81-1.88 (from 6.0-6.1 at step 0) and 2.61-2.71 bits per byte at step 60, against the
    # bounds first - 2.0 and 4.0 below
    raw = _raw()
    raw["train"] = {**raw["train"], "steps": 60, "eval_every": 30}
    cfg = load_pretrain_config(_write(tmp_path, raw))
    model = pretrain(cfg, tmp_path, log=False)
    run = tmp_path / "targets" / "llama_test"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in evals] == [0, 30, 60]
    assert any("train/loss" in r for r in records)
    first, last = evals[0], evals[-1]
    assert first["val/loss"] == pytest.approx(math.log(256), abs=1.0)  # ~uniform at init
    assert last["val/loss"] < first["val/loss"] - 2.0
    assert last["val/bits_per_byte"] < 4.0
    assert (run / "config.yaml").is_file()

    restored = load_pretrained(cfg, tmp_path)  # checkpoint exists: restores, no retraining
    x = jnp.asarray(BYTES.encode(Path(cfg.data.corpus).read_text())[:64].reshape(2, 32))
    np.testing.assert_array_equal(np.asarray(restored(x)), np.asarray(model(x)))


def test_pretrain_in_bf16_learns_like_fp32_with_fp32_masters(tmp_path: Path) -> None:
    """S15.2 through `param-decomp pretrain`: bf16 compute learns as fp32 does; the saved
    model (the master weights) is float32; the checkpoint holds the pipeline position."""
    raw = _raw(run_name="llama_bf16")
    raw["train"] = {**raw["train"], "steps": 60, "eval_every": 60, "compute_dtype": "bfloat16"}
    model = pretrain(load_pretrain_config(_write(tmp_path, raw)), tmp_path, log=False)
    raw32 = {**raw, "run_name": "llama_fp32", "train": {**raw["train"], "compute_dtype": "float32"}}
    pretrain(load_pretrain_config(_write(tmp_path, raw32)), tmp_path, log=False)

    def last_val(name: str) -> float:
        lines = (tmp_path / "targets" / name / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["val/loss"]

    assert last_val("llama_bf16") < math.log(256) - 1.5
    assert abs(last_val("llama_bf16") - last_val("llama_fp32")) < 0.1
    leaves = jax.tree.leaves(nnx.state(model))
    assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
    state = restore_data_state(tmp_path / "targets" / "llama_bf16" / "checkpoints")
    assert state is not None and state["next_index"] == 60


def test_val_bits_per_byte_is_total_ce_over_bytes(tmp_path: Path) -> None:
    cfg = PretrainConfig.model_validate(_raw())
    model = build_lm(cfg.model, cfg.seed)
    store = prepare_tokens(cfg.data, 32, tmp_path)
    windows = jnp.asarray(fixed_windows(store.val, 32, 8))
    metrics = evaluate(model, windows, BYTES_PER_TOKEN)

    logits = np.asarray(model(windows[:, :-1]), np.float64)
    targets = np.asarray(windows[:, 1:])
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    n_bytes = int(np.sum(targets != 0))  # byte tokenizer: 1 byte each, EOD (id 0) none
    assert float(metrics["val/bits_per_byte"]) == pytest.approx(
        ce.sum() / math.log(2) / n_bytes, rel=1e-5
    )
    assert float(metrics["val/loss"]) == pytest.approx(ce.mean(), rel=1e-5)


@pytest.mark.parametrize(
    "objective",
    [
        {"kind": "cross_entropy"},
        {"kind": "cross_entropy", "label_smoothing": 0.1, "z_loss": 1e-4},
        {"kind": "focal"},
        {"kind": "focal", "gamma": 1.0, "z_loss": 1e-4},
        {"kind": "bytes_weighted_ce"},
        {"kind": "poly1", "epsilon": 1.0, "z_loss": 1e-4},
    ],
)
def test_every_objective_trains_one_step(tmp_path: Path, objective: dict) -> None:
    raw = _raw(objective=objective)
    raw["train"] = {**raw["train"], "steps": 1}
    cfg = load_pretrain_config(_write(tmp_path, raw))
    pretrain(cfg, tmp_path, log=False)
    records = (tmp_path / "targets" / "llama_test" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(records[-1])
    assert last["step"] == 1 and math.isfinite(last["train/loss"])
    assert math.isfinite(last["val/loss"]) and math.isfinite(last["val/bits_per_byte"])


def test_objective_matches_lm_objectives_plain_ce() -> None:
    logits = jax.random.normal(jax.random.key(0), (2, 5, 256))
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 256)
    cfg = PretrainConfig.model_validate(_raw(objective={"kind": "bytes_weighted_ce"}))
    bw = make_objective(cfg.objective, BYTES_PER_TOKEN)(logits, targets)
    ce = make_objective(PretrainConfig.model_validate(_raw()).objective, BYTES_PER_TOKEN)(
        logits, targets
    )
    assert float(bw) == pytest.approx(float(ce), rel=1e-6)  # 1 byte per token: the same loss


def test_focal_without_gamma_uses_default(tmp_path: Path) -> None:
    cfg = load_pretrain_config(_write(tmp_path, _raw(objective={"kind": "focal"})))
    assert cfg.objective.gamma == 2.0


def test_label_smoothing_with_focal_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, _raw(objective={"kind": "focal", "label_smoothing": 0.1}))
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(path)
    assert [key for key, _ in info.value.problems] == ["objective.label_smoothing"]
    assert str(path) in str(info.value)


def test_gamma_without_focal_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, _raw(objective={"kind": "cross_entropy", "gamma": 1.0}))
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(path)
    assert [key for key, _ in info.value.problems] == ["objective.gamma"]


def test_vocab_mismatch_is_a_config_error(tmp_path: Path) -> None:
    raw = _raw()
    raw["model"] = {**raw["model"], "vocab_size": 300}
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(_write(tmp_path, raw))
    assert [key for key, _ in info.value.problems] == ["model.vocab_size"]
    assert "256" in str(info.value)
    with pytest.raises(ValueError, match="model.vocab_size"):  # direct construction checks too
        PretrainConfig.model_validate(raw)


def test_unknown_key_and_missing_corpus_are_config_errors(tmp_path: Path) -> None:
    raw = _raw(data={"corpus": str(tmp_path / "nope.txt")})
    with pytest.raises(ConfigError, match="data.corpus"):
        load_pretrain_config(_write(tmp_path, raw))
    raw = _raw(objective={"kind": "focal", "gama": 1.0})
    with pytest.raises(ConfigError, match="Did you mean 'gamma'"):
        load_pretrain_config(_write(tmp_path, raw))


def test_byte_tokenizer_round_trips() -> None:
    text = "Hana and Cleo walk. naïve"
    assert BYTES.decode(BYTES.encode(text)) == text


def test_shipped_config_loads_and_llama_is_not_toy_trained() -> None:
    cfg = load_pretrain_config(REPO / "configs" / "targets" / "llama_tiny.yaml")
    assert cfg.model.vocab_size == 256
    from param_decomp.config.schema import TargetConfig
    from param_decomp.jobs.train_target import train_target

    toy = TargetConfig.model_validate(
        {
            "run_name": "x",
            "model": cfg.model.model_dump(),
            "data": {"feature_probability": 0.1},
            "train": {"steps": 1, "batch_size": 1, "optimizer": {"lr": 1e-3}},
        }
    )
    with pytest.raises(ConfigError, match="param-decomp pretrain"):
        train_target(toy, Path("/nonexistent"))
    assert isinstance(nnx.state(build_lm(cfg.model, cfg.seed)), nnx.State)


def test_poly1_objective_and_soft_cap_from_config(tmp_path: Path) -> None:
    from param_decomp.losses.lm_objectives import poly1

    raw = _raw(objective={"kind": "poly1", "epsilon": 0.5})
    raw["model"]["logit_soft_cap"] = 30.0
    cfg = load_pretrain_config(_write(tmp_path, raw))
    assert cfg.model.logit_soft_cap == 30.0
    logits = jax.random.normal(jax.random.key(0), (2, 4, 256))
    targets = jnp.zeros((2, 4), jnp.int32)
    loss = make_objective(cfg.objective, jnp.ones((256,), jnp.int32))(logits, targets)
    assert loss == poly1(logits, targets, 0.5)
    with pytest.raises(ConfigError, match="objective.epsilon"):
        load_pretrain_config(_write(tmp_path, _raw(objective={"epsilon": 0.5})))
