"""Acceptance: SPD recovers the known mechanisms of the residual-MLP toy target (issue 3, item
3). Its own file (the TMS half is test_toy_recovery.py): each takes minutes, and pytest-xdist
--dist loadfile gives a file to one worker, so two files let the two workers share them."""

from pathlib import Path

import pytest

from param_decomp.jobs.decompose import run_decompose
from param_decomp.runconfig.decompose import load_decompose_config

pytestmark = [pytest.mark.runs_long(seconds=35), pytest.mark.optimized_xla]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_resid_mlp_alive_components_match_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    cfg = load_decompose_config(FIXTURES / "resid_mlp_small.yaml")
    result = run_decompose(cfg, "resid_mlp_small.yaml", tmp_path, show_progress=False)
    n_features = 30
    alive_in = int(result["alive"]["layers.0.mlp_in"].sum())
    print(f"ResidMLP small: {alive_in} alive mlp_in components for {n_features} features")
    assert abs(alive_in - n_features) <= 0.1 * n_features, alive_in
