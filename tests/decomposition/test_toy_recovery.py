"""Acceptance: SPD recovers the known mechanisms of the toy targets (issue 3, items 2 and 3)."""

from pathlib import Path

import numpy as np
import pytest

from param_decomp.eval.figures import permute_to_identity
from param_decomp.jobs.decompose import run_decompose
from param_decomp.runconfig.decompose import load_decompose_config

pytestmark = [pytest.mark.runs_long(seconds=35), pytest.mark.optimized_xla]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_tms_5_2_recovers_one_component_per_feature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    cfg = load_decompose_config(FIXTURES / "tms_5-2_fast.yaml")
    result = run_decompose(cfg, "tms_5-2_fast.yaml", tmp_path, show_progress=False)
    for site in ("linear1", "linear2"):
        assert int(result["alive"][site].sum()) == 5, (site, result["alive"][site].sum())
        ci = result["one_hot_ci"][site][:, result["alive"][site]]
        _, permuted = permute_to_identity(ci)
        # every feature has its own component, fully on for that feature (S14.1)
        assert np.all(np.diag(permuted) > 0.9), (site, np.round(permuted, 2))
    _, permuted = permute_to_identity(
        result["one_hot_ci"]["linear1"][:, result["alive"]["linear1"]]
    )
    np.testing.assert_allclose(permuted, np.eye(5), atol=0.1)
    assert result["losses"]["eval/loss/faithfulness"] < 1e-4
