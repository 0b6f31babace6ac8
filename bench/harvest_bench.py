"""The harvest bench (`harvest_shakespeare`): `param-decomp harvest` tokens/s on the Shakespeare
CPU decomposition's shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench_common import RUNS_DIR, common_fields
from flax import nnx

HARVEST_BENCH = "harvest_shakespeare"
HARVEST_CONFIG = "configs/shakespeare_cpu.yaml"
HARVEST_TOKENS = 131_072  # 128 batches of 8 windows of 128 tokens


def bench_harvest(tokens: int = HARVEST_TOKENS) -> dict[str, Any]:
    """Harvest tokens/s with the default settings (top-k 20, context 16, reservoir 20) on the
    Shakespeare CPU decomposition's shapes. Target and decomposition are freshly initialised:
    pretraining and decomposing it take tens of minutes here, and the harvest's work (the clean
    pass, the CI function, the statistics) does not depend on the weights' values, except how
    many tokens fire. `tokens_per_s` leaves out the first batch (the compilation)."""
    import tempfile

    from param_decomp.config.pretrain_schema import load_pretrain_config
    from param_decomp.harvest.settings import HarvestSettings
    from param_decomp.jobs.decompose import new_decomposition
    from param_decomp.jobs.harvest import OpenRun, harvest
    from param_decomp.runconfig.decompose import load_decompose_config
    from param_decomp.targets.build import build_lm

    cfg = load_decompose_config(HARVEST_CONFIG)
    target_cfg = load_pretrain_config(cfg.target)
    target = build_lm(target_cfg.model, cfg.seed)
    graphdef, params = nnx.split(new_decomposition(cfg, target))
    with tempfile.TemporaryDirectory() as tmp:
        run = OpenRun(Path(tmp), RUNS_DIR, 0, cfg, target_cfg, target, graphdef, params)
        result = harvest(run, HarvestSettings(tokens=tokens), show_progress=False)
    settings = result.settings
    per_batch = settings["batch_size"] * settings["seq_len"]
    steady = result.seconds - result.first_batch_seconds
    n_components = sum(s["C"] for s in result.summary["sites"].values())
    return {
        **common_fields(HARVEST_BENCH),
        "config": HARVEST_CONFIG,
        "weights": "freshly initialised target and decomposition",
        "tokens": result.summary["tokens"],
        "batch": settings["batch_size"],
        "seq_len": settings["seq_len"],
        "components": n_components,
        "vocab": int(target_cfg.model.vocab_size),
        "top_k": settings["top_k"],
        "context": settings["context"],
        "reservoir": settings["reservoir"],
        "first_batch_s": result.first_batch_seconds,
        "pass_s": result.seconds,
        "tokens_per_s": (result.batches - 1) * per_batch / steady,
    }


def print_harvest_line(result: dict[str, Any]) -> None:
    print(
        f"{HARVEST_BENCH}: {result['tokens_per_s']:.0f} tokens/s ({result['tokens']} tokens, "
        f"{result['components']} components, batch {result['batch']} x {result['seq_len']}; "
        f"first batch with compilation {result['first_batch_s']:.1f} s)"
    )
