"""`param-decomp check-goldens DIR`: every case of every golden file, one line each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from param_decomp.goldens import decomposition, importance, lm_losses, objective, recon, schedules  # noqa: F401
from param_decomp.goldens.registry import FAMILIES


@dataclass(frozen=True)
class CaseResult:
    family: str
    case: str
    max_abs_err: float
    passed: bool
    detail: str = ""


def check_case(family: str, case: dict) -> CaseResult:
    """Evaluate one case; pass iff every element satisfies |got-want| <= atol + rtol |want|."""
    atol, rtol = float(case["atol"]), float(case["rtol"])
    worst, failed = 0.0, []
    for comp in FAMILIES[family](case):
        got, want = np.asarray(comp.got, np.float64), np.asarray(comp.want, np.float64)
        if got.shape != want.shape:
            failed.append(f"{comp.name}: shape {got.shape} != {want.shape}")
            continue
        err = np.abs(got - want)
        worst = max(worst, float(err.max(initial=0.0)))
        if not np.all(err <= atol + rtol * np.abs(want)):
            failed.append(f"{comp.name}: max err {float(err.max()):.3g}")
    return CaseResult(family, case["name"], worst, not failed, "; ".join(failed))


def check_file(path: Path) -> list[CaseResult]:
    data = json.loads(path.read_text())
    family = data.get("family")
    if family not in FAMILIES:
        return [
            CaseResult(
                str(family), path.name, float("nan"), False, f"family not understood: {family!r}"
            )
        ]
    return [check_case(family, case) for case in data["cases"]]


def check_goldens_dir(directory: Path) -> int:
    """One line per case and a total; status 1 if anything failed or was not understood."""
    files = sorted(Path(directory).glob("*.json"))
    if not files:
        print(f"no golden *.json files in {directory}")
        return 1
    results = [r for f in files for r in check_file(f)]
    for r in results:
        status = "PASS" if r.passed else "FAIL"
        print(f"{status}  {r.family:<22} {r.case:<45} max_abs_err={r.max_abs_err:.3g} {r.detail}")
    n_fail = sum(not r.passed for r in results)
    print(f"{len(results) - n_fail}/{len(results)} cases passed")
    return 1 if n_fail else 0
