"""The study's write-up: markdown tables per vocabulary, the figure, where the numbers came from,
and the comparison with published figures, all generated from the run JSONs and the study
config's own text (SPEC S16.3). Nothing here is written by hand, so a re-render after new runs
cannot leave a stale sentence behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from param_decomp.study.plot import write_plot
from param_decomp.study.schema import Published, Study
from param_decomp.study.summary import CellResult, Comparison, Spread, compare, summarise

SPREAD_RULE = (
    "Spread is over seeds (each seed sets the initialisation and the training batch order): "
    "± is the sample standard deviation (n − 1 in the denominator) and min–max the range. A "
    "difference from the baseline lies *within the seed spread* when the two cells' min–max "
    "ranges overlap, i.e. some seed of the one is at least as good as some seed of the other."
)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"`{prefix}{key}={json.dumps(value)}`")
    return out


def _provenance(results: list[CellResult]) -> list[str]:
    """One line per distinct (commit, machine) the finished runs came from."""
    sources: dict[str, list[str]] = {}
    for result in results:
        for record in result.records:
            code = record.get("commit")
            sha = "unknown commit" if code is None else f"commit `{code['sha'][:12]}`"
            if code is not None and code["dirty"]:
                sha += " (with uncommitted changes)"
            m = record["machine"]
            where = (
                f"{m['cpu']}, {m['cpu_cores']} cores, jax {m['jax_version']} on the "
                f"{m['jax_backend']} backend ({m['devices']})"
            )
            sources.setdefault(f"{sha}; machine: {where}", []).append(
                f"{record['cell']}/{record['seed']}"
            )
    loads = [
        r["load_average_1m_at_end"]
        for result in results
        for r in result.records
        if "load_average_1m_at_end" in r
    ]
    load = (
        [
            f"- 1-minute load average at the end of each run: {min(loads):.1f} to "
            f"{max(loads):.1f} (above the core count, other work shared the machine: compare "
            "the CPU seconds, which depend much less on the load than the wall seconds)."
        ]
        if loads
        else []
    )
    if len(sources) == 1:
        return [f"- Numbers from {next(iter(sources))}.", *load]
    lines = [f"- Numbers from {src}: runs {', '.join(runs)}." for src, runs in sources.items()]
    return lines + load


def _setup(study: Study, results: list[CellResult]) -> list[str]:
    cfg = study.runs[0].config
    m, t = cfg.model, cfg.train
    opt = t.optimizer
    tokens = t.steps * t.batch_size * cfg.seq_len
    lines = [
        "## Setup",
        "",
        f"- Model: {m.type}, {m.n_layers} layer{'s' * (m.n_layers != 1)}, d_model {m.d_model}, "
        f"{m.n_heads} heads, "
        f"d_mlp {m.d_mlp}, context {cfg.seq_len}.",
        f"- Training: {t.steps} steps × batch {t.batch_size} × {cfg.seq_len} tokens = "
        f"{tokens:,} tokens per run; AdamW lr {opt.lr:g}, weight decay {opt.weight_decay:g}, "
        f"schedule {opt.schedule.kind}.",
        f"- Corpus `{cfg.data.corpus}`; validation on the first {cfg.data.max_val_windows} "
        "windows of its val split, the same for every cell of a vocabulary. Validation is plain "
        "next-token cross entropy (nats per token) and bits per byte whatever the training "
        "objective, so rows compare.",
        "- Cells (overrides of the base config):",
    ]
    for cell in study.config.cells:
        shown = ", ".join(_flatten(cell.overrides)) or "none"
        lines.append(f"  - `{cell.name}`: {shown}")
    lines += _provenance(results)
    lines += [f"- {SPREAD_RULE}", ""]
    return lines


def _per_seed(result: CellResult) -> str:
    parts = [f"{r['seed']}: {r['final_val_bpb']:.4f}" for r in result.records]
    parts += [f"{s}: diverged" for s in result.diverged]
    parts += [f"{s}: not run" for s in result.missing]
    return ", ".join(parts)


def _mean_std(s: Spread | None) -> str:
    if s is None:
        return "—"
    return f"{s.mean:.4f}" + ("" if s.std is None else f" ± {s.std:.4f}")


def _results_table(results: list[CellResult]) -> list[str]:
    lines = [
        "| cell | objective | val bpb mean ± std | min–max | per seed (seed: bpb) "
        "| val CE nats/token (mean) | wall s (mean) | CPU s (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        span = "—" if r.bpb is None else f"{r.bpb.lo:.4f}–{r.bpb.hi:.4f}"
        lines.append(
            f"| `{r.cell.name}`{' (baseline)' if r.cell.baseline else ''} | {r.objective} "
            f"| {_mean_std(r.bpb)} | {span} | {_per_seed(r)} "
            f"| {_fmt(r.ce.mean if r.ce else None)} | {_fmt(r.wall.mean if r.wall else None, 0)} "
            f"| {_fmt(r.cpu.mean if r.cpu else None, 0)} |"
        )
    return lines


def _verdict(comparison: Comparison | None, published: Published | None) -> str:
    """How this study's difference relates to the published one."""
    if comparison is None:
        return "no finished runs"
    if comparison.within_spread is None:
        return "one seed: no spread to judge by"
    if comparison.within_spread:
        return "not resolved here: within the seed spread"
    here = "better" if comparison.delta < 0 else "worse"
    if published is None:
        return f"{here} than the baseline, beyond the seed spread"
    agree = "same direction as" if here == published.direction else "opposite direction to"
    return f"{here}, beyond the seed spread: {agree} the published result"


def _comparison_table(results: list[CellResult]) -> list[str]:
    baseline = next(r for r in results if r.cell.baseline)
    lines = [
        f"| cell | objective | Δ val bpb vs `{baseline.cell.name}` (mean) | within seed spread? "
        "| published figure | here vs published |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if r is baseline:
            continue
        comparison = compare(r, baseline)
        delta = "—" if comparison is None else f"{comparison.delta:+.4f}"
        within = {None: "n/a", True: "yes", False: "no"}[
            None if comparison is None else comparison.within_spread
        ]
        for published in r.cell.published or [None]:
            claim = "—" if published is None else published.claim
            lines.append(
                f"| `{r.cell.name}` | {r.objective} | {delta} | {within} | {claim} "
                f"| {_verdict(comparison, published)} |"
            )
    return lines


def _findings(group: str, results: list[CellResult]) -> str:
    """One generated sentence group per vocabulary: which cells differ from the baseline
    beyond the seed spread, in which direction, and which do not (S16.3)."""
    baseline = next(r for r in results if r.cell.baseline)
    better, worse, within, open_ = [], [], [], []
    for r in results:
        if r is baseline:
            continue
        c = compare(r, baseline)
        name = f"`{r.cell.name}` ({c.delta:+.4f})" if c else f"`{r.cell.name}`"
        if c is None or c.within_spread is None:
            open_.append(name)
        elif c.within_spread:
            within.append(name)
        else:
            (better if c.delta < 0 else worse).append(name)
    spread = baseline.bpb
    parts = [
        f"**{group}.** The baseline `{baseline.cell.name}` reaches "
        + (
            f"{spread.mean:.4f} val bpb (seeds {spread.lo:.4f}–{spread.hi:.4f})."
            if spread
            else "no finished run."
        )
    ]
    if better:
        parts.append("Better beyond the seed spread: " + ", ".join(better) + ".")
    if worse:
        parts.append("Worse beyond the seed spread: " + ", ".join(worse) + ".")
    if within:
        parts.append("Within the seed spread (no evidence either way): " + ", ".join(within) + ".")
    if open_:
        parts.append("Not yet comparable (fewer than two seeds): " + ", ".join(open_) + ".")
    return " ".join(parts)


def render_markdown(study: Study, results: list[CellResult], plot_path: Path, md: Path) -> str:
    cfg = study.config
    groups: dict[str, list[CellResult]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    n_runs = sum(len(r.records) + len(r.diverged) for r in results)
    lines = [
        f"# {cfg.report.title}",
        "",
        f"_Generated by `param-decomp study {study.path}` from {n_runs} of {len(study.runs)} "
        "runs; edit the study config, not this file._",
        "",
    ]
    if cfg.report.intro:
        lines += [cfg.report.intro.strip(), ""]
    lines += _setup(study, results)
    lines += ["## Results", ""]
    for group, members in groups.items():
        lines += [f"### {group}", "", *_results_table(members), ""]
    plot_link = Path(os.path.relpath(plot_path, md.parent)).as_posix()
    lines += [f"![val bits per byte against step, per cell]({plot_link})", ""]
    lines += ["## What the runs show", ""]
    for group, members in groups.items():
        lines += [_findings(group, members), ""]
    lines += ["## Comparison with published figures", ""]
    for group, members in groups.items():
        lines += [f"### {group}", "", *_comparison_table(members), ""]
    lines += ["## What would change the conclusion", "", cfg.report.caveats.strip(), ""]
    return "\n".join(lines)


def render(study: Study, runs_dir: Path) -> tuple[Path, Path]:
    """Write the markdown and the PNG named in the study config; return their paths."""
    results = summarise(study, runs_dir)
    md = Path(study.config.report.markdown)
    plot = Path(study.config.report.plot)
    write_plot(results, plot)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(render_markdown(study, results, plot, md))
    return md, plot
