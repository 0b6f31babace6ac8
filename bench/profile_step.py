"""Where a decomposition step spends its time: per-XLA-op wall time from `jax.profiler`.

    .venv/bin/python bench/profile_step.py configs/resid_mlp_1.yaml --batch 2048 --steps 20
    .venv/bin/python bench/profile_step.py configs/tms_5-2.yaml --batch 4096 --top 25

Runs the jitted train step `--steps` times under `jax.profiler.trace`, then sums the duration
of every event on the device/host planes by name (an XLA:CPU thunk is one fusion, dot or
copy) and prints the top ones as ms per step with their share of the step. Names match the
fusions in the compiled HLO (`--dump-hlo DIR` writes it), so a slow fusion can be read there.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import jax

import param_decomp  # noqa: F401  (XLA:CPU defaults before the backend starts)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_common import RUNS_DIR, batch_sampler, load_config, open_session  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--C", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--dump-hlo", type=Path, default=None, help="write the optimized HLO here")
    parser.add_argument(
        "--by-kind", action="store_true", help="also sum the ops by kind (products, copies, ...)"
    )
    args = parser.parse_args()

    updates = {"batch_size": args.batch} if args.batch else {}
    cfg = load_config(args.config, **updates)
    if args.C:
        cfg = cfg.model_copy(
            update={"decomposition": cfg.decomposition.model_copy(update={"C": args.C})}
        )
    session = open_session(cfg, args.config)
    step, target_state, sample = session.train_step, session.target_state, batch_sampler(session)
    state = session.state
    for i in range(3):
        state, metrics = step(state, target_state, sample(i))
    jax.block_until_ready((state, metrics))
    if args.dump_hlo:
        args.dump_hlo.mkdir(parents=True, exist_ok=True)
        text = step.lower(state, target_state, sample(0)).compile().as_text()
        (args.dump_hlo / "train_step.hlo.txt").write_text(text)

    batches = [jax.block_until_ready(sample(10 + i)) for i in range(args.steps)]
    with tempfile.TemporaryDirectory() as trace_dir:
        t0 = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            for b in batches:
                state, metrics = step(state, target_state, b)
            jax.block_until_ready((state, metrics))
        wall = (time.perf_counter() - t0) / args.steps
        path = next(Path(trace_dir).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(path))

    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    for plane in data.planes:
        for line in plane.lines:
            if "python" in line.name.lower():
                continue
            for event in line.events:
                totals[event.name] += event.duration_ns
                counts[event.name] += 1
    print(f"{args.config}: {wall * 1e3:.2f} ms/step under the profiler ({args.steps} steps)")
    print(f"{'ms/step':>9} {'share':>6} {'calls':>6}  event")
    for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[: args.top]:
        ms = ns / 1e6 / args.steps
        print(f"{ms:>9.3f} {ms / (wall * 1e3):>6.1%} {counts[name] // args.steps:>6}  {name[:90]}")
    if args.by_kind:
        print_by_kind(totals, counts, args.steps, wall)
    _ = RUNS_DIR
    return 0


# XLA:CPU thunk names by what they do; the first matching prefix wins
KINDS = (
    ("products with fused elementwise (YNNPACK)", ("ynn_fusion", "xnn_fusion", "onednn")),
    ("plain dots", ("dot", "custom-call")),
    ("layout copies and transposes", ("copy", "transpose", "bitcast")),
    ("reductions", ("reduce", "input_reduce", "loop_reduce")),
    ("sorts (top-k, quantiles)", ("sort",)),
    ("while loops (the RNG's rolled threefry rounds)", ("while", "body", "cond")),
)


def op_kind(name: str) -> str | None:
    """The kind of one XLA:CPU thunk event, None for the executor's own wrapper events."""
    if name.startswith("ThunkExecutor") or " " in name:
        return None
    for kind, prefixes in KINDS:
        if name.startswith(prefixes):
            return kind
    return "other elementwise fusions"


def print_by_kind(
    totals: dict[str, float], counts: dict[str, int], steps: int, wall: float
) -> None:
    """ms per step and kernel count by kind: where a step goes beyond its products."""
    by_ms: dict[str, float] = collections.defaultdict(float)
    by_n: dict[str, int] = collections.defaultdict(int)
    for name, ns in totals.items():
        kind = op_kind(name)
        if kind is not None:
            by_ms[kind] += ns / 1e6 / steps
            by_n[kind] += counts[name] // steps
    print(f"\n{'ms/step':>9} {'share':>6} {'kernels':>7}  kind")
    for kind, ms in sorted(by_ms.items(), key=lambda kv: -kv[1]):
        print(f"{ms:>9.1f} {ms / (wall * 1e3):>6.1%} {by_n[kind]:>7}  {kind}")


if __name__ == "__main__":
    sys.exit(main())
