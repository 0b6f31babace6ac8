"""`param-decomp plan CONFIG --devices N`: the planning runs in a child process started with N
simulated CPU devices (XLA fixes the device count when jax starts), so the command works from
any process and on any machine (SPEC S13.5).

Exit codes: 0 the step fits the budget, 1 it does not, 2 a usage or config error.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from param_decomp.config.errors import ConfigError

EXIT_FITS, EXIT_OVER_BUDGET, EXIT_USAGE = 0, 1, 2
MESH_AXES = ("data", "fsdp", "tensor")
DEVICE_FLAG = "--xla_force_host_platform_device_count"


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="decomposition YAML, e.g. configs/plan/llama3_8b.yaml")
    p.add_argument("--devices", type=int, required=True, help="simulated devices to plan for")
    p.add_argument("--mesh", help="axis sizes overriding the config's, e.g. data=8,fsdp=8")
    p.add_argument(
        "--budget-gib", type=float, default=80.0, help="memory one device has (default 80)"
    )
    p.add_argument(
        "--peak-flops", type=float, help="an accelerator's peak FLOP/s beside the presets"
    )
    p.add_argument("--json", dest="json_out", help="also write the report as JSON here")


def parse_mesh(text: str | None) -> dict[str, int]:
    """'data=8,fsdp=8' -> {'data': 8, 'fsdp': 8}; ValueError naming what is wrong."""
    if not text:
        return {}
    out: dict[str, int] = {}
    for part in text.split(","):
        axis, _, size = part.partition("=")
        axis = axis.strip()
        if axis not in MESH_AXES or not size.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r}: expected AXIS=SIZE with AXIS in {MESH_AXES}")
        out[axis] = int(size)
    return out


def run_plan(args: argparse.Namespace) -> int:
    """Check the arguments here, then plan in a child with `--devices` simulated devices."""
    if args.devices < 1:
        print("--devices must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        parse_mesh(args.mesh)
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return EXIT_USAGE
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    env = {
        **os.environ,
        "XLA_FLAGS": " ".join([*flags, f"{DEVICE_FLAG}={args.devices}"]),
        "JAX_PLATFORMS": "cpu",
    }
    argv = [sys.executable, "-m", "param_decomp.plan.command", args.config]
    argv += ["--devices", str(args.devices), "--budget-gib", str(args.budget_gib)]
    for flag, value in (("--mesh", args.mesh), ("--json", args.json_out)):
        if value:
            argv += [flag, value]
    if args.peak_flops is not None:
        argv += ["--peak-flops", repr(args.peak_flops)]
    return subprocess.run(argv, env=env, check=False).returncode


def plan_in_this_process(args: argparse.Namespace) -> int:
    """The child: build the abstract step, compile it, print (and write) the report."""
    import jax

    from param_decomp.config.loading import check_mesh, load_decompose_config
    from param_decomp.plan.abstract_step import build_abstract_step
    from param_decomp.plan.report import build_report, format_report
    from param_decomp.train.loop import load_target_config

    if jax.device_count() != args.devices:
        raise RuntimeError(f"{jax.device_count()} devices, expected {args.devices}")
    cfg = load_decompose_config(args.config)
    mesh = parse_mesh(args.mesh)
    if mesh:
        cfg = cfg.model_copy(update={"mesh": cfg.mesh.model_copy(update=mesh)})
    check_mesh(cfg, args.devices, args.config)
    target_cfg = load_target_config(cfg, args.config)
    t0 = time.perf_counter()
    step = build_abstract_step(cfg, target_cfg)
    compiled = step.lower().compile()
    compile_s = time.perf_counter() - t0
    report = build_report(cfg, step, compiled, args.budget_gib, args.peak_flops, compile_s)
    # Linux reports ru_maxrss in KiB
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return EXIT_FITS if report["fits"] else EXIT_OVER_BUDGET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="param-decomp plan (child)")
    add_plan_args(parser)
    args = parser.parse_args(argv)
    from param_decomp.decomposition.sites import SiteError
    from param_decomp.targets.hf.errors import HFCheckpointError

    try:
        parse_mesh(args.mesh)
        return plan_in_this_process(args)
    except (ConfigError, HFCheckpointError) as err:
        print(str(err), file=sys.stderr)
        return EXIT_USAGE
    except (SiteError, ValueError) as err:  # unresolvable sites, a malformed --mesh
        print(f"{args.config}: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
