"""A Hugging Face folder that cannot become a target fails with an error naming the tensor,
config.json key or file at fault (S17.6); the `target: {hf: ...}` config block is checked at
load. Folders are written with numpy (tests/hf_checkpoints.py): no torch needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hf_checkpoints import LLAMA_CONFIG, llama_tensors, write_hf_folder, write_llama

from param_decomp.cli import main
from param_decomp.config.errors import ConfigError
from param_decomp.config.schema import HFTarget
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.runconfig.target_config import resolve_target_config
from param_decomp.targets.hf.config_map import hf_target_spec
from param_decomp.targets.hf.errors import HFCheckpointError
from param_decomp.targets.hf.load import load_hf_target


def _load(folder: Path, dtype: str = "float32") -> object:
    return load_hf_target(hf_target_spec(HFTarget(hf=str(folder), dtype=dtype), None))  # type: ignore[arg-type]


def _problems(err: pytest.ExceptionInfo[HFCheckpointError]) -> dict[str, str]:
    return dict(err.value.problems)


def test_a_valid_numpy_written_folder_loads(tmp_path: Path) -> None:
    """The fixture the error cases below break is itself loadable (GQA k/v site shapes)."""
    target = _load(write_llama(tmp_path / "ok"))
    weights = target.site_weights()  # type: ignore[attr-defined]
    assert weights["layers.0.attn.k"].shape == (32, 16)
    assert weights["layers.1.mlp.down"].shape == (48, 32)


def test_unsupported_architecture_lists_the_supported_ones(tmp_path: Path) -> None:
    folder = write_llama(tmp_path / "m", model_type="mistral", architectures=["MistralForCausalLM"])
    with pytest.raises(HFCheckpointError) as err:
        _load(folder)
    msg = _problems(err)["model_type"]
    assert "'mistral'" in msg and "MistralForCausalLM" in msg
    assert all(name in msg for name in ("LlamaForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel"))
    assert err.value.path.endswith("config.json")


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    tensors = llama_tensors(LLAMA_CONFIG)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    folder = write_hf_folder(tmp_path / "m", LLAMA_CONFIG, tensors, n_files=2)
    with pytest.raises(HFCheckpointError) as err:
        _load(folder)
    assert list(_problems(err)) == ["model.layers.1.mlp.up_proj.weight"]
    assert "missing" in _problems(err)["model.layers.1.mlp.up_proj.weight"]
    assert "model.layers.1.mlp.up_proj.weight: missing" in str(err.value)


def test_shape_mismatch_names_expected_and_stored(tmp_path: Path) -> None:
    """k_proj stored as if every query head had its own K/V head: (32, 32), expected (16, 32)."""
    tensors = llama_tensors(LLAMA_CONFIG)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 32), np.float32)
    folder = write_hf_folder(tmp_path / "m", LLAMA_CONFIG, tensors)
    with pytest.raises(HFCheckpointError) as err:
        _load(folder)
    msg = _problems(err)["model.layers.0.self_attn.k_proj.weight"]
    assert "[32, 32]" in msg and "expected [16, 32]" in msg and "model.safetensors" in msg


def test_dtype_the_loader_does_not_allow(tmp_path: Path) -> None:
    tensors = llama_tensors(LLAMA_CONFIG)
    tensors["model.norm.weight"] = np.ones(32, np.int8)
    folder = write_hf_folder(tmp_path / "m", LLAMA_CONFIG, tensors)
    with pytest.raises(HFCheckpointError) as err:
        _load(folder, "bfloat16")
    msg = _problems(err)["model.norm.weight"]
    assert "I8" in msg and "bfloat16" in msg and "F32, BF16, F16" in msg


def test_unread_tensor_is_refused_not_ignored(tmp_path: Path) -> None:
    """A q_proj bias (a variant with attention biases) would change the function silently."""
    tensors = llama_tensors(LLAMA_CONFIG)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)  # skipped
    folder = write_hf_folder(tmp_path / "m", LLAMA_CONFIG, tensors)
    with pytest.raises(HFCheckpointError) as err:
        _load(folder)
    assert list(_problems(err)) == ["model.layers.0.self_attn.q_proj.bias"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_parameters.rope_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_size": None}, "hidden_size"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"head_dim": 7}, "head_dim"),
        ({"vocab_size": -5}, "vocab_size"),
    ],
)
def test_config_json_problems_name_the_key(tmp_path: Path, overrides: dict, key: str) -> None:
    config = {**LLAMA_CONFIG, **overrides}
    folder = write_hf_folder(tmp_path / "m", config, llama_tensors(LLAMA_CONFIG))
    with pytest.raises(HFCheckpointError) as err:
        _load(folder)
    assert key in _problems(err), err.value.problems


def test_no_weight_files_or_no_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(HFCheckpointError, match=r"no \*\.safetensors.*pytorch_model\.bin"):
        _load(tmp_path / "empty")
    (tmp_path / "bare").mkdir()
    with pytest.raises(HFCheckpointError, match="no config.json"):
        _load(tmp_path / "bare")


DECOMPOSE = {
    "run_name": "hf_err",
    "decomposition": {"C": 4, "sites": ["layers.0.mlp.up"]},
    "losses": [{"type": "faithfulness", "coeff": 1.0}],
    "train": {"steps": 2, "batch_size": 4, "optimizer": {"lr": 1e-3}},
}


def _config(tmp_path: Path, **blocks: object) -> Path:
    path = tmp_path / "decompose.yaml"
    path.write_text(yaml.safe_dump({**DECOMPOSE, **blocks}))
    return path


def test_config_block_folder_checks(tmp_path: Path) -> None:
    """target.hf: the folder must exist and hold config.json; relative to the config's folder."""
    with pytest.raises(ConfigError) as err:
        load_decompose_config(_config(tmp_path, target={"hf": "nowhere"}))
    assert "target.hf" in dict(err.value.problems) and "not found" in str(err.value)
    (tmp_path / "no_config").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        load_decompose_config(_config(tmp_path, target={"hf": "no_config"}))
    write_llama(tmp_path / "model")
    cfg = load_decompose_config(_config(tmp_path, target={"hf": "model"}))
    assert isinstance(cfg.target, HFTarget) and Path(cfg.target.hf) == tmp_path / "model"


def test_config_data_block_must_fit_the_target(tmp_path: Path) -> None:
    write_llama(tmp_path / "model")
    sparse = {"feature_probability": 0.1}
    with pytest.raises(ConfigError, match="an hf target reads text"):
        load_decompose_config(_config(tmp_path, target={"hf": "model"}, data=sparse))
    (tmp_path / "t.yaml").write_text("run_name: t\n")
    with pytest.raises(ConfigError, match="only applies to an `hf:` target"):
        load_decompose_config(_config(tmp_path, target="t.yaml", data={"seq_len": 8}))
    with pytest.raises(ConfigError) as err:
        load_decompose_config(_config(tmp_path, target={"hf": "model", "dtype": "float16"}))
    assert "target.dtype" in dict(err.value.problems)


def test_data_the_model_cannot_read(tmp_path: Path) -> None:
    """The byte tokenizer's 256 ids need vocab_size >= 256; windows fit the positions."""
    write_llama(tmp_path / "model", vocab_size=200)
    cfg = load_decompose_config(_config(tmp_path, target={"hf": "model"}, data={"seq_len": 100}))
    with pytest.raises(ConfigError) as err:
        resolve_target_config(cfg, "decompose.yaml")
    problems = dict(err.value.problems)
    assert (
        "256 tokens" in problems["data.tokenizer"]
        and "vocab_size 200" in problems["data.tokenizer"]
    )
    assert "64 positions" in problems["data.seq_len"]


def test_cli_reports_a_broken_checkpoint_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tensors = llama_tensors(LLAMA_CONFIG)
    del tensors["model.norm.weight"]
    write_hf_folder(tmp_path / "model", LLAMA_CONFIG, tensors)
    config = _config(tmp_path, target={"hf": "model"}, data={"seq_len": 8, "max_val_windows": 8})
    runs = tmp_path / "runs"
    assert main(["decompose", str(config), "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model.norm.weight: missing" in err and "Traceback" not in err
    assert not (runs / "hf_err").exists()  # refused before the run folder is made
