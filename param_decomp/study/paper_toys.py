"""The write-up of `param-decomp reproduce` (S18.4): one markdown page from the run records,
each experiment's numbers beside the paper's, shortened runs labelled with their shortfall."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from param_decomp.study.reproduce import (
    read_record,
    record_path,
    records_dir,
    same_config,
    saved_config,
)
from param_decomp.study.reproduce_schema import Experiment, PlannedExperiment, Reproduction


def _without_budget(config: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    out.pop("run_name", None)
    out.get("train", {}).pop("steps", None)
    return out


def pick_record(planned: PlannedExperiment, runs_dir: Path) -> tuple[dict | None, str]:
    """The record of this invocation's budget if it exists, else the longest run of the same
    experiment and config at another budget; with a note when it is the latter."""
    own = read_record(record_path(runs_dir, planned))
    if own is not None and same_config(own, planned):
        return own, ""
    current = _without_budget(planned.config.model_dump(mode="json"))
    others = [
        r
        for p in sorted(records_dir(runs_dir).glob("*.json"))
        if (r := read_record(p)) is not None
        and r.get("name") == planned.spec.name
        and _without_budget(saved_config(r.get("config"), str(p)) or {}) == current
    ]
    if not others:
        return None, ""
    best = max(others, key=lambda r: r["steps"])
    return best, f"the record of a {best['steps']}-step run (this invocation's budget has none)"


def outcome_problems(spec: Experiment, record: dict[str, Any]) -> list[str]:
    """Why a run misses the paper's outcome, measured; empty when it meets it."""
    problems = []
    exp = spec.expect
    for site, n in exp.alive.items():
        got = record["sites"].get(site, {}).get("alive")
        if got is None:
            problems.append(f"{site}: no such site in the run")
        elif abs(got - n) > exp.tolerance * n:
            allowed = f" ± {exp.tolerance * n:g}" if exp.tolerance else ""
            problems.append(f"{site}: {got} alive, paper {n}{allowed}")
    if exp.zero_identity_error:
        for site, entry in record["sites"].items():
            if entry.get("pattern") == "identity" and entry["ci_error"] != 0:
                problems.append(f"{site}: identity-CI error {entry['ci_error']}, paper 0")
    return problems


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _num(value: Any, fmt: str = ".3g") -> str:
    return "—" if value is None else format(value, fmt)


def budget_label(record: dict[str, Any]) -> str:
    """Full length, or SHORTENED with the shortfall: a short run is never the paper's."""
    steps, paper = record["steps"], record["paper_steps"]
    if steps >= paper:
        return f"full length ({steps} steps)"
    return f"**SHORTENED**: {steps} of the paper's {paper} steps ({100 * steps / paper:.1f} %)"


def _summary_row(planned: PlannedExperiment, record: dict | None, runs_dir: Path) -> str:
    spec = planned.spec
    if record is None:
        why = spec.cpu_note or f"no record under {records_dir(runs_dir)}"
        return f"| {spec.title} | not run: {why} | | | | | {spec.expect.text} | — |"
    sites = record["sites"]
    alive = ", ".join(
        f"{s} {e['alive']}" + (f"/{e['expected']}" if "expected" in e else "")
        for s, e in sites.items()
    )
    errors = ", ".join(f"{s} {e['ci_error']}" for s, e in sites.items() if "ci_error" in e)
    mmcs = ", ".join(f"{s} {e['mmcs']:.3f}" for s, e in sites.items() if e["mmcs"] is not None)
    problems = outcome_problems(spec, record)
    verdict = "met" if not problems else "missed: " + "; ".join(problems)
    if record["steps"] < record["paper_steps"] and not problems:
        verdict = "met (at a shortened budget)"
    return (
        f"| {spec.title} | {budget_label(record)} | {alive} | {errors or '—'} | {mmcs or '—'} "
        f"| {_table_time(record)} | {spec.expect.text} | {verdict} |"
    )


def _commit_text(c: dict[str, Any] | None) -> str:
    c = c or {}
    return c.get("sha", "unknown")[:10] + (" (with uncommitted changes)" if c.get("dirty") else "")


def _machine_line(record: dict[str, Any]) -> str:
    m = record.get("machine") or {}
    return (
        f"{m.get('cpu', '?')}, {m.get('cpu_cores', '?')} cores, jax {m.get('jax_version', '?')} "
        f"on {m.get('devices', '?')}; commit {_commit_text(record.get('commit'))}; "
        f"finished {record.get('finished', '?')}"
    )


def _rescored_line(record: dict[str, Any]) -> list[str]:
    """The scores' provenance when `--rescore` recomputed them after the run (S18.4)."""
    again = record.get("rescored")
    if not again:
        return []
    return [
        f"Scores re-computed from the step-{again.get('checkpoint_step', '?')} checkpoint by "
        f"`--rescore` at commit {_commit_text(again.get('commit'))}, {again.get('when', '?')}; "
        "losses and times are the run's."
    ]


def _table_time(record: dict) -> str:
    if record.get("total_wall_s") is not None:
        return _duration(record["total_wall_s"])
    last = _duration(record["wall_s"])
    return f"{last} (last part)" if record.get("resumed") else last


def _decomposition_time(record: dict) -> str:
    """The whole run's time where every part of a stopped-and-continued run is in its ledger,
    else the last part's, saying from which step (S18.4)."""
    last = _duration(record["wall_s"])
    if not record.get("resumed"):
        return last
    if record.get("total_wall_s") is not None:
        return (
            f"{_duration(record['total_wall_s'])} in {record['parts']} parts "
            f"(the last, from step {record['resumed_from_step']}, {last})"
        )
    if "resumed_from_step" in record:
        return f"{last} (resumed at step {record['resumed_from_step']}; this part only)"
    return f"{last} (resumed; this part only)"


def _section(
    planned: PlannedExperiment, record: dict | None, note: str, figure: str | None
) -> list[str]:
    spec = planned.spec
    lines = [f"## {spec.title}", "", f"Config: `{spec.config}`. Paper: {spec.expect.text}", ""]
    if record is None:
        return [*lines, f"Not run. {spec.cpu_note}".rstrip(), ""]
    lines += [
        f"Run `{record['run_name']}`: {budget_label(record)}." + (f" ({note})" if note else "")
    ]
    lines += [
        f"Wall time: decomposition {_decomposition_time(record)}"
        + f", target {_duration(record['target_s'])} (training or loading its cache).",
        f"Machine and code: {_machine_line(record)}.",
        *_rescored_line(record),
        "",
        "| site | C | alive | paper | CI pattern | CI error at 0.75 | mean max cos |",
        "|---|---|---|---|---|---|---|",
    ]
    for site, e in record["sites"].items():
        lines.append(
            f"| {site} | {e['C']} | {e['alive']} | {e.get('expected', '—')} "
            f"| {e.get('pattern', '—')} | {e.get('ci_error', '—')} | {_num(e['mmcs'], '.4f')} |"
        )
    losses = ", ".join(
        f"{k.removeprefix('eval/loss/')} {v:.3g}" for k, v in record["losses"].items()
    )
    mse = ", ".join(f"{k} {v:.3g}" for k, v in record["mse"].items())
    lines += ["", f"Final eval losses: {losses}.", f"Output MSE by mask (fast tier): {mse}.", ""]
    problems = outcome_problems(spec, record)
    lines += [
        "Outcome: "
        + ("as the paper." if not problems else "differs from the paper: " + "; ".join(problems)),
        "",
    ]
    if spec.measured_note:
        lines += [f"Measured: {spec.measured_note.strip()}", ""]
    if figure:
        lines += [f"![CI on single-feature inputs at 0.75: {spec.title}]({figure})", ""]
    return lines


def _copy_figure(record: dict | None, name: str, figures: Path, markdown: Path) -> str | None:
    """The run's CI figure copied beside the write-up; its path relative to the markdown."""
    if record is None or not Path(record["figure"]).is_file():
        return None
    figures.mkdir(parents=True, exist_ok=True)
    out = figures / f"{name}_ci.png"
    shutil.copyfile(record["figure"], out)
    try:
        return str(out.resolve().relative_to(markdown.resolve().parent))
    except ValueError:
        return str(out.resolve())


HEADER = (
    "| experiment | budget | alive per site (paper) | identity/dense-CI error at 0.75 "
    "| mean max cos with true features | decomposition wall time | paper | outcome |"
)


def render(repro: Reproduction, runs_dir: Path, markdown: Path | None = None) -> Path:
    """Write the markdown (default: the config's `markdown`) from the records; returns it."""
    cfg = repro.config
    out = Path(markdown or cfg.markdown)
    figures = out.parent / Path(cfg.figures).name if markdown else Path(cfg.figures)
    picked = [(p, *pick_record(p, runs_dir)) for p in repro.experiments]
    lines = [
        f"# {cfg.title}",
        "",
        "Generated by `param-decomp reproduce "
        f"{repro.path}` from the run records in `{records_dir(runs_dir)}` (SPEC S18); "
        "do not edit by hand.",
        "",
        cfg.intro.strip(),
        "",
        HEADER,
        "|---|---|---|---|---|---|---|---|",
        *(_summary_row(p, r, runs_dir) for p, r, _ in picked),
        "",
    ]
    for p, record, note in picked:
        figure = _copy_figure(record, p.spec.name, figures, out)
        lines += _section(p, record, note, figure)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).replace("\n\n\n", "\n\n"))
    return out
