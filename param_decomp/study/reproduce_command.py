"""The `param-decomp reproduce` command's arguments and body (S18); imported by `cli.py` when
the parser is built, so it imports nothing heavy at module level."""

from __future__ import annotations

import argparse
from pathlib import Path


def _steps(value: str) -> tuple[str, int]:
    name, _, n = value.partition("=")
    if not name or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=STEPS with STEPS ≥ 1, got {value!r}")
    return name, int(n)


def add_reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="reproduction YAML, e.g. configs/reproduce/paper.yaml")
    p.add_argument("--runs-dir", default="runs", help="where runs and records go (default: runs)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--render-only", action="store_true", help="run nothing; render the runs that are done"
    )
    mode.add_argument(
        "--rescore",
        action="store_true",
        help="train nothing; re-score the finished runs from their final checkpoints, render",
    )
    p.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="run each experiment for this fraction of the paper's steps (labelled SHORTENED)",
    )
    p.add_argument(
        "--steps",
        type=_steps,
        action="append",
        default=[],
        metavar="NAME=N",
        help="one experiment's step budget (repeatable; wins over --steps-scale)",
    )
    p.add_argument("--only", help="comma-separated experiment names to run (default: all)")
    p.add_argument("--out", help="markdown to write (default: the config's `markdown`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_reproduce_command(args: argparse.Namespace) -> int:
    """Run the experiments not done (unless --render-only or --rescore: re-score the finished
    ones), then render the write-up."""
    from param_decomp.study.paper_toys import render
    from param_decomp.study.reproduce import rescore_all, run_all
    from param_decomp.study.reproduce_schema import load_reproduction

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    repro = load_reproduction(args.config, args.steps_scale, dict(args.steps), only)
    runs_dir = Path(args.runs_dir)
    if args.rescore:
        rescore_all(repro, runs_dir)
    elif not args.render_only:
        run_all(repro, runs_dir, show_progress=not args.no_progress)
    if only is not None:  # the write-up always lists every experiment
        repro = load_reproduction(args.config, args.steps_scale, dict(args.steps))
    out = render(repro, runs_dir, Path(args.out) if args.out else None)
    print(f"reproduce {repro.config.name}: wrote {out}")
    return 0
