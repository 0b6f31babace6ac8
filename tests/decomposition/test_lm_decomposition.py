"""The LM path end to end: pretrained Llama target, token windows, KL / focal / smooth-L0 terms."""

import json
from pathlib import Path

import numpy as np
import pytest

from param_decomp.config.loading import load_decompose_config
from param_decomp.train.loop import run_decompose

REPO = Path(__file__).resolve().parents[2]


def test_lm_decomposition_runs_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = load_decompose_config(REPO / "tests" / "fixtures" / "llama_micro.yaml")
    result = run_decompose(cfg, "llama_micro.yaml", tmp_path, show_progress=False)
    assert (tmp_path / "targets" / "llama_micro" / "checkpoint").is_dir()  # pretrained first
    assert set(result["alive"]) == {"layers.0.mlp.up", "layers.0.mlp.down", "layers.0.attn.v"}
    # probe = one val sequence: CI rows are its tokens
    assert result["one_hot_ci"]["layers.0.mlp.up"].shape == (16, 8)
    records = [
        json.loads(x) for x in (tmp_path / "llama_micro" / "metrics.jsonl").read_text().splitlines()
    ]
    last = records[-1]
    for key in (
        "train/loss/smooth_l0",
        "train/loss/frequency",
        "train/loss/focal",
        "train/loss/stochastic_recon_layerwise",
        "train/smooth_l0/gamma",
        "train/frequency/mean_f",
    ):
        assert key in last and np.isfinite(last[key]), key
    assert all(np.isfinite(v) for v in result["losses"].values())
