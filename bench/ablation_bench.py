"""The ablation bench (`ablation_shakespeare`): `param-decomp ablate` effects per second on the
Shakespeare CPU decomposition's shapes (issue 33)."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from bench_common import common_fields
from flax import nnx

ABLATION_BENCH = "ablation_shakespeare"
ABLATION_CONFIG = "configs/shakespeare_cpu.yaml"
TIMED_BATCHES = 4  # per site, after the one that compiles


def bench_ablation(timed_batches: int = TIMED_BATCHES) -> dict[str, Any]:
    """Ablations per second through the job's own per-site step (`make_ablation_step`), one
    program per site as `ablate` runs them, at the harvest's default batch (the run's
    `train.batch_size` windows of `seq_len` tokens, one ablation per row). Target and
    decomposition are freshly initialised and the rows random: an ablation's cost (a clean
    pass and a forward with one site's mask) does not depend on the weights or on which
    component is removed. `ablations_per_s` leaves out each site's first batch (compilation),
    which `compile_s` sums."""
    from param_decomp.config.pretrain_schema import load_pretrain_config
    from param_decomp.harvest.ablation import make_ablation_step
    from param_decomp.jobs.decompose import new_decomposition
    from param_decomp.runconfig.decompose import load_decompose_config
    from param_decomp.targets.build import build_lm

    cfg = load_decompose_config(ABLATION_CONFIG)
    target_cfg = load_pretrain_config(cfg.target)
    target = build_lm(target_cfg.model, cfg.seed)
    model = new_decomposition(cfg, target)
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    batch, seq = cfg.train.batch_size, int(target_cfg.model.seq_len)
    vocab = int(target_cfg.model.vocab_size)
    rng = np.random.default_rng(0)
    compile_s = steady_s = 0.0
    timed = 0
    for site, C in model.site_C.items():
        step = make_ablation_step(site, graphdef, target_graphdef)
        for i in range(1 + timed_batches):
            x = rng.integers(0, vocab, (batch, seq), dtype=np.int32)
            component = rng.integers(0, C, batch, dtype=np.int32)
            position = rng.integers(0, seq, batch, dtype=np.int32)
            nxt = rng.integers(0, vocab, batch, dtype=np.int32)
            started = time.perf_counter()
            jax.block_until_ready(step(params, target_state, x, component, position, nxt))
            seconds = time.perf_counter() - started
            if i == 0:
                compile_s += seconds
            else:
                steady_s += seconds
                timed += batch
    return {
        **common_fields(ABLATION_BENCH),
        "config": ABLATION_CONFIG,
        "weights": "freshly initialised target and decomposition; random rows",
        "sites": len(model.site_C),
        "batch": batch,
        "seq_len": seq,
        "ablations_timed": timed,
        "compile_s": compile_s,
        "ablations_per_s": timed / steady_s,
    }


def print_ablation_line(result: dict[str, Any]) -> None:
    print(
        f"{ABLATION_BENCH}: {result['ablations_per_s']:.1f} ablations/s ({result['sites']} sites, "
        f"batch {result['batch']} x {result['seq_len']}; {result['compile_s']:.1f} s compiling "
        "one program per site)"
    )
