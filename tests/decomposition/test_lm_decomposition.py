"""The LM path end to end: pretrained Llama target, token windows, KL / focal / smooth-L0 terms."""

import json
from pathlib import Path

import numpy as np
import pytest

from param_decomp.config.pretrain_schema import load_pretrain_config
from param_decomp.data.pipeline import TextBatches
from param_decomp.data.sources import TextSource
from param_decomp.data.token_store import prepare_tokens
from param_decomp.jobs.decompose import run_decompose
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.train.checkpoint import restore_data_state

REPO = Path(__file__).resolve().parents[2]


def test_lm_decomposition_runs_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = load_decompose_config(REPO / "tests" / "fixtures" / "llama_micro.yaml")
    result = run_decompose(cfg, "llama_micro.yaml", tmp_path, show_progress=False)
    assert (tmp_path / "targets" / "llama_micro" / "checkpoints").is_dir()  # pretrained first
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
    # the run read its batches through the grain pipeline; its position is in the checkpoint
    data_state = restore_data_state(tmp_path / "llama_micro" / "checkpoints")
    assert data_state is not None
    assert data_state["next_index"] == cfg.train.steps and data_state["seed"] == cfg.seed + 1


def test_lm_source_batches_are_the_pipeline_batches(tmp_path: Path) -> None:
    """S12.5: LM decomposition and pretraining draw from the same pipeline; a source asked for
    another step (a resumed run) moves the pipeline there."""
    target = load_pretrain_config(REPO / "tests" / "fixtures" / "llama_micro_target.yaml")
    source = TextSource(target, batch_size=4, seed=3, cache_root=tmp_path)
    window = target.seq_len - 1
    store = prepare_tokens(target.data, window, tmp_path)
    batches = TextBatches(store.train, window, 4, seed=4)
    expected = [np.asarray(next(batches)) for _ in range(5)]
    for step in (0, 1, 2):
        np.testing.assert_array_equal(np.asarray(source.train_batch(step)), expected[step])
    np.testing.assert_array_equal(np.asarray(source.train_batch(4)), expected[4])
    assert source.get_state()["next_index"] == 5
