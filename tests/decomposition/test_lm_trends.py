"""Issue 11, acceptance 1: an LM decomposition on a tiny budget moves the way a decomposition
should: the stochastic-mask KL and the mean CI-L0 fall together, and the CI-masked model is
closer to the target than the zero-masked one (fast tier, S14.2-S14.5)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from param_decomp.jobs.decompose import run_decompose
from param_decomp.runconfig.decompose import load_decompose_config

pytestmark = pytest.mark.runs_long(seconds=30)

REPO = Path(__file__).resolve().parents[2]


def test_s14_2_lm_decomposition_lowers_kl_and_ci_l0_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_targets: Callable[..., Path]
) -> None:
    monkeypatch.chdir(REPO)
    trained_targets(tmp_path, REPO / "tests" / "fixtures" / "llama_2l_target.yaml")
    cfg = load_decompose_config(REPO / "tests" / "fixtures" / "llama_2l.yaml")
    result = run_decompose(cfg, "llama_2l.yaml", tmp_path, show_progress=False)
    lines = (tmp_path / "llama_2l" / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if "eval/kl/stochastic" in r]
    assert [r["step"] for r in evals] == [25, 50, 75, 100]
    kl = [r["eval/kl/stochastic"] for r in evals]
    l0 = [r["eval/ci_l0/mean"] for r in evals]
    print("kl/stochastic", kl, "ci_l0/mean", l0)
    assert kl[-1] < 0.8 * kl[0], kl
    assert l0[-1] < 0.8 * l0[0], l0
    assert all(b <= a * 1.02 for a, b in zip(l0, l0[1:], strict=False)), l0  # no rebound
    final = result["fast_tier"]
    gap_ci = final["eval/ce/ci"] - final["eval/ce/target"]
    gap_zero = final["eval/ce/zero"] - final["eval/ce/target"]
    print(f"CE target {final['eval/ce/target']:.3f}: ci +{gap_ci:.3f}, zero +{gap_zero:.3f}")
    assert 0 <= gap_ci < gap_zero
