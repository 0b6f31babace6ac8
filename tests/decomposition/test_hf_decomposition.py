"""A decomposition of a loaded Hugging Face Llama (S17): `target: {hf: folder}` with a text
`data:` block (byte tokenizer on the bundled corpus), target weights sharded over fsdp and
read straight into their shards, grouped-query k/v sites; 5 steps from the config file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from hf_checkpoints import write_llama

from param_decomp.jobs.decompose import run_decompose
from param_decomp.runconfig.decompose import load_decompose_config

SITES = ["layers.0.attn.k", "layers.0.mlp.up"]


def test_hf_llama_decomposition_runs_5_steps(tmp_path: Path) -> None:
    write_llama(tmp_path / "tiny_llama", n_files=2, num_hidden_layers=1)
    config = {
        "run_name": "hf_llama",
        "target": {"hf": "tiny_llama"},
        "data": {"seq_len": 16, "max_val_windows": 16},
        "decomposition": {"C": 8, "sites": SITES, "ci_function": {"type": "global_mlp"}},
        "losses": [
            {"type": "faithfulness", "coeff": 1.0},
            {"type": "importance_minimality", "coeff": 1e-3, "pnorm": 1.0},
            {"type": "stochastic_recon", "coeff": 1.0, "distance": "kl"},
        ],
        "train": {"steps": 5, "batch_size": 8, "optimizer": {"lr": 1e-3}, "log_every": 1},
        "eval": {"n_batches": 1, "batch_size": 8, "figures": False},
        "mesh": {"fsdp": 2, "shard_target_weights": True},
    }
    path = tmp_path / "hf_llama.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_decompose_config(path)
    result = run_decompose(cfg, str(path), tmp_path / "runs", show_progress=False)

    assert set(result["alive"]) == set(SITES)
    assert result["one_hot_ci"]["layers.0.attn.k"].shape == (16, 8)  # one val window x C
    lines = (tmp_path / "runs" / "hf_llama" / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if "train/loss/total" in r]
    assert len(steps) == 5
    assert all(np.isfinite(r["train/loss/total"]) for r in steps)
    assert all(np.isfinite(v) for v in result["losses"].values())
