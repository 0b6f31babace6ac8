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
from typing import Any

import yaml

from param_decomp.config.errors import ConfigError

EXIT_FITS, EXIT_OVER_BUDGET, EXIT_USAGE = 0, 1, 2
MESH_AXES = ("data", "fsdp", "tensor")
DEVICE_FLAG = "--xla_force_host_platform_device_count"
# The plan never runs the step, so its compile may skip what only running needs: LLVM's
# optimisation of the machine code, and XLA:CPU's MLIR fusion emitters, whose kernels keep
# about 130 MiB per Llama-3-8B layer resident after the compile (64-device 8B plan: 4.8 GiB peak
# RSS with them). The memory and cost analyses are fixed before code generation: an 8-layer 8B
# plan on 64 devices gives identical bytes, FLOPs and collectives either way, at half the peak
# RSS and about half the compile time. A user's XLA_FLAGS win.
PLANNER_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)


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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (dotted, the value read as YAML), e.g. "
        "train.optimizer.moment_dtype=bfloat16 or 'train.remat=[masked_forwards]'; repeatable",
    )


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


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.batch_size=16' -> (['train', 'batch_size'], 16); ValueError naming the problem."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. mesh.fsdp=8")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ValueError(f"--set {text!r}: the value is not YAML ({err})") from None
    return parts, parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`data` (a config's YAML mapping) with each `--set` applied; the config is validated
    after, so a wrong key or value is reported like one written in the file."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ValueError(f"--set {text!r}: {where} is not a mapping")
            node = child
        node[parts[-1]] = value
    return data


def run_plan(args: argparse.Namespace) -> int:
    """Check the arguments here, then plan in a child with `--devices` simulated devices."""
    if args.devices < 1:
        print("--devices must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        parse_mesh(args.mesh)
        for text in args.overrides:
            parse_override(text)
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return EXIT_USAGE
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    given = {f.split("=")[0] for f in flags}
    flags += [f for f in PLANNER_COMPILE_FLAGS if f.split("=")[0] not in given]
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
    for text in args.overrides:
        argv += ["--set", text]
    return subprocess.run(argv, env=env, check=False).returncode


def plan_in_this_process(args: argparse.Namespace) -> int:
    """The child: build the abstract step, compile it, print (and write) the report."""
    import jax

    from param_decomp.config.loading import check_mesh, read_yaml
    from param_decomp.plan.abstract_step import build_abstract_step
    from param_decomp.plan.report import build_report, format_report
    from param_decomp.runconfig.decompose import decompose_config_from_data
    from param_decomp.runconfig.target_config import resolve_target_config

    if jax.device_count() != args.devices:
        raise RuntimeError(f"{jax.device_count()} devices, expected {args.devices}")
    # --mesh is `--set mesh.AXIS=SIZE` for each axis, applied last so it wins
    mesh = [f"mesh.{axis}={size}" for axis, size in parse_mesh(args.mesh).items()]
    data = apply_overrides(read_yaml(args.config), [*args.overrides, *mesh])
    cfg = decompose_config_from_data(data, args.config)
    check_mesh(cfg, args.devices, args.config)
    target_cfg = resolve_target_config(cfg, args.config)
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
