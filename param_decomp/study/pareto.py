"""The sweep's write-up (SPEC S19.3): the Pareto figure (per layer, the layer's L0 share against
the whole model's rounded `ce_unrecovered`, each cell's marker coloured by its least-carried
judged layer, the goal region shaded), the long-run curves (rounded `ce_unrecovered` and each
layer's L0 share against step) and a markdown table with the command that made it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import cm, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from param_decomp.study.grid import read_record
from param_decomp.study.sweep import progress_record, record_path
from param_decomp.study.sweep_schema import Sweep

Y_RANGE = (1e-3, 1.0)  # L0 shares from 0.1 % to all components on


def done_records(sweep: Sweep, runs_dir: Path) -> list[dict[str, Any]]:
    """The records of the cells that are done with today's config, in config order; a cell
    still running (or stopped to be continued) in its place with its curve so far."""
    out = []
    for cell in sweep.cells:
        record = read_record(record_path(sweep, cell, runs_dir))
        if record is not None and record.get("config_hash") == cell.config_hash:
            out.append(record)
        elif (progress := progress_record(cell, runs_dir)) is not None:
            out.append(progress)
    return out


def _layers(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in records if "layers" in r for k in r["layers"]))


def pareto_figure(sweep: Sweep, records: list[dict[str, Any]], path: Path) -> None:
    done = [r for r in records if r["status"] == "done"]
    layers = _layers(done) or ["(none)"]
    fig = Figure(figsize=(4.2 * len(layers), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    norm = colors.Normalize(0.0, 1.0)
    cmap = matplotlib.colormaps["viridis"]
    goal_x, goal_y = sweep.config.unrecovered_goal, sweep.config.l0_share_goal
    for ax, layer in zip(axes, layers, strict=True):
        ax.fill_between([0, goal_x], Y_RANGE[0], goal_y, color="0.9", zorder=0)
        ax.axhline(goal_y, color="0.5", lw=0.8, ls="--")
        ax.axvline(goal_x, color="0.5", lw=0.8, ls="--")
        for r in done:
            if layer not in r.get("layers", {}) or r["rounded_unrecovered"] is None:
                continue  # a toy has no CE, so no point on this figure
            x, y = r["rounded_unrecovered"], r["layers"][layer]["l0_share"]
            carried = r["min_carried"]
            color = "0.6" if carried is None else cmap(norm(max(0.0, min(1.0, carried))))
            ax.scatter([x], [max(y, 1e-4)], s=60, color=color, edgecolor="k", zorder=3)
            ax.annotate(r["cell"], (x, max(y, 1e-4)), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylim(*Y_RANGE)
        ax.set_xlim(left=0)
        ax.set_title(layer, fontsize=10)
        ax.set_xlabel("rounded (CI > 0.1) ce_unrecovered, whole model")
    axes[0].set_ylabel("L0 share (components on per token / C), layer mean")
    fig.colorbar(cm.ScalarMappable(norm, cmap), ax=list(axes), label="min carried (judged layers)")
    fig.suptitle(
        f"{sweep.config.report.title}: the goal is the shaded corner",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def curves_figure(records: list[dict[str, Any]], path: Path) -> None:
    done = [r for r in records if r["status"] in ("done", "in_progress") and r.get("history")]
    layers = _layers(done) or ["(none)"]
    fig = Figure(figsize=(4.0 * (1 + len(layers)), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(layers), squeeze=False)[0]
    for i, r in enumerate(done):
        steps = np.asarray([h["step"] for h in r["history"]])
        color, style = f"C{i % 10}", "o-" if r["status"] == "done" else "o--"
        label = r["cell"] if r["status"] == "done" else f"{r['cell']} (unfinished, {_progress(r)})"
        unrec = [h["rounded_unrecovered"] for h in r["history"]]
        unrec = [np.nan if u is None else u for u in unrec]
        axes[0].plot(steps, unrec, style, color=color, ms=3, label=label)
        for ax, layer in zip(axes[1:], layers, strict=True):
            share = [h["layers"].get(layer, {}).get("l0_share", np.nan) for h in r["history"]]
            ax.plot(steps, share, style, color=color, ms=3)
    axes[0].set_title("rounded (CI > 0.1) ce_unrecovered", fontsize=10)
    axes[0].legend(fontsize=7)
    for ax, layer in zip(axes[1:], layers, strict=True):
        ax.set_title(f"{layer}: L0 share", fontsize=10)
        ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _progress(r: dict[str, Any]) -> str:
    return f"step {r['step']} of {r['steps']}"


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(records: list[dict[str, Any]]) -> str:
    layers = _layers(records)
    head = ["cell", "steps", "max site L0 share"]
    head += [f"{layer} L0 share" for layer in layers]
    head += [f"{layer} carried" for layer in layers]
    head += ["rounded unrecovered", "CI unrecovered", "wall (this part)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if r["status"] == "in_progress":
            last = r["history"][-1]
            lines.append(
                f"| {r['cell']} | {r['steps']} | unfinished ({_progress(r)}); at step "
                f"{last['step']}: max site L0 share {_fmt(last['max_l0_share'])}, min carried "
                f"{_fmt(last['min_carried'])}, rounded unrecovered "
                f"{_fmt(last['rounded_unrecovered'])} |"
            )
            continue
        if r["status"] != "done":
            lines.append(f"| {r['cell']} | {r['steps']} | diverged: {r.get('error', '')} |")
            continue
        row = [r["cell"], str(r["steps"]), _fmt(r["max_l0_share"])]
        row += [_fmt(r["layers"][k]["l0_share"]) if k in r["layers"] else "" for k in layers]
        for k in layers:
            v = r["layers"].get(k)
            if v is None:
                row.append("")
            elif not v["carry_applicable"]:
                row.append(f"n/a (gap {_fmt(v['carry_gap'])} nats)")
            else:
                row.append(_fmt(v["carried"]))
        row += [_fmt(r["rounded_unrecovered"]), _fmt(r["unrecovered"].get("ci"))]
        row.append(f"{r['wall_s'] / 60:.1f} min")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render(sweep: Sweep, runs_dir: Path, config_arg: str) -> tuple[Path, Path, Path]:
    """Write the markdown, the Pareto PNG and the curves PNG; returns their paths."""
    records = done_records(sweep, runs_dir)
    report = sweep.config.report
    md, plot = Path(report.markdown), Path(report.plot)
    curves = plot.with_name(plot.stem + "_curves" + plot.suffix)
    pareto_figure(sweep, records, plot)  # done cells only: a running one is not a result
    curves_figure(records, curves)
    notes = [f"- **{r['cell']}**: {r['note']}" for r in records if r.get("note")]
    machines = sorted({f"{r['machine']['cpu']} ({r['machine']['cpu_cores']} cores)"
                       for r in records if "machine" in r})  # fmt: skip
    done = sum(r["status"] != "in_progress" for r in records)

    def rel(p: Path) -> str:
        return os.path.relpath(p, md.parent)

    text = [
        f"# {report.title}",
        "",
        report.intro.strip(),
        "",
        f"Made by `param-decomp sweep {config_arg}` ({done} of {len(sweep.cells)} "
        "cells done). Goal: every site's L0 share <= "
        f"{sweep.config.l0_share_goal:g}, every judged layer carried >= 0.8, rounded "
        f"`ce_unrecovered` <= {sweep.config.unrecovered_goal:g}.",
        "",
        f"![Pareto]({rel(plot)})",
        "",
        table(records),
        "",
        *notes,
        "",
        f"![curves]({rel(curves)})",
        "",
        f"Machines: {', '.join(machines) or 'none yet'}.",
        "",
    ]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(text))
    return md, plot, curves
