"""Acceptance: every golden case passes with the project's own code (S-GOLD)."""

import json
from pathlib import Path

import pytest

from param_decomp.goldens.registry import FAMILIES
from param_decomp.goldens.runner import check_case, check_file, check_goldens_dir

GOLDEN_FILES = sorted((Path(__file__).resolve().parents[2] / "shared" / "goldens").glob("*.json"))


def _cases() -> list:
    out = []
    for path in GOLDEN_FILES:
        data = json.loads(path.read_text())
        out += [
            pytest.param(data["family"], c, id=f"{path.stem}:{c['name']}") for c in data["cases"]
        ]
    return out


def test_every_golden_family_is_understood(goldens_dir: Path) -> None:
    families = {json.loads(p.read_text())["family"] for p in goldens_dir.glob("*.json")}
    assert families <= set(FAMILIES), families - set(FAMILIES)
    assert len(GOLDEN_FILES) >= 9


@pytest.mark.parametrize(("family", "case"), _cases())
def test_golden_case_passes(family: str, case: dict) -> None:
    result = check_case(family, case)
    assert result.passed, f"{family}/{case['name']}: {result.detail}"


def test_check_goldens_fails_on_perturbed_case(tmp_path: Path, goldens_dir: Path) -> None:
    data = json.loads((goldens_dir / "faithfulness.json").read_text())
    data["cases"][0]["expected"]["loss"] = float(data["cases"][0]["expected"]["loss"]) * 1.01
    (tmp_path / "faithfulness.json").write_text(json.dumps(data))
    assert not check_file(tmp_path / "faithfulness.json")[0].passed
    assert check_goldens_dir(tmp_path) == 1


def test_check_goldens_rejects_unknown_family(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"family": "nope", "cases": []}))
    assert check_goldens_dir(tmp_path) == 1


def test_check_goldens_passes_shared_dir(goldens_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_goldens_dir(goldens_dir) == 0
    assert "cases passed" in capsys.readouterr().out
