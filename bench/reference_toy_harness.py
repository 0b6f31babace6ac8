"""The reference's side of the toy benches on any torch device (the GPU bench uses `cuda`).

../shared/reference/time_reference.py times the reference's own `spd.run_spd.optimize` on the
CPU only. This harness runs the same two toy workloads (TMS 5-2 at batch 4096 and ResidMLP-1 at
batch 2048 with C 100, each from the reference's published config, random target weights) on
the device named, with the same method: per-step time is the difference of two run lengths,
so import, set-up and the faithfulness warm-up cancel; an untimed run before them takes the
one-time costs (CUDA context, kernel loading, allocator growth). No evaluation, no
logging. Runs inside the reference's environment from the snapshot's folder (PYTHONPATH=.):

    python bench/reference_toy_harness.py tms 100,1100 --device cuda
    python bench/reference_toy_harness.py resid 20,220 --device cuda

Prints one JSON line.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import reference_stubs  # beside this script: its folder is on sys.path

reference_stubs.install()

import torch  # noqa: E402
import yaml  # noqa: E402
from spd.configs import Config  # noqa: E402
from spd.experiments.resid_mlp.configs import ResidMLPModelConfig  # noqa: E402
from spd.experiments.resid_mlp.models import ResidMLP  # noqa: E402
from spd.experiments.resid_mlp.resid_mlp_dataset import ResidMLPDataset  # noqa: E402
from spd.experiments.tms.configs import TMSModelConfig  # noqa: E402
from spd.experiments.tms.models import TMSModel  # noqa: E402
from spd.run_spd import optimize  # noqa: E402
from spd.utils.data_utils import DatasetGeneratedDataLoader, SparseFeatureDataset  # noqa: E402

EXPERIMENTS = Path("spd/experiments")


def workload(bench: str, device: str) -> tuple[dict, torch.nn.Module, object]:
    """(the published config as a dict, a random target, its data set) for one toy bench."""
    if bench == "tms":
        raw = yaml.safe_load((EXPERIMENTS / "tms/tms_5-2_config.yaml").read_text())
        target = TMSModel(
            TMSModelConfig(
                n_features=5,
                n_hidden=2,
                n_hidden_layers=0,
                tied_weights=False,
                init_bias_to_zero=False,
                device=device,
            )
        )
        data = SparseFeatureDataset(
            n_features=5,
            feature_probability=0.05,
            device=device,
            data_generation_type="at_least_zero_active",
            value_range=(0.0, 1.0),
        )
    else:
        raw = yaml.safe_load((EXPERIMENTS / "resid_mlp/resid_mlp1_config.yaml").read_text())
        target = ResidMLP(
            ResidMLPModelConfig(
                n_features=100,
                d_embed=1000,
                d_mlp=50,
                n_layers=1,
                act_fn_name="relu",
                in_bias=False,
                out_bias=False,
            )
        )
        data = ResidMLPDataset(
            n_features=100,
            feature_probability=0.01,
            device=device,
            calc_labels=False,
            label_type=None,
            act_fn_name=None,
            label_fn_seed=None,
            label_coeffs=None,
            data_generation_type="at_least_zero_active",
        )
    raw.update(
        wandb_project=None,
        eval_metric_configs=[],
        pretrained_model_path=None,
        train_log_freq=10**9,
        eval_freq=10**9,
        n_eval_steps=1,
        slow_eval_freq=10**9,
    )
    return raw, target.to(device).eval(), data


def run_seconds(raw: dict, target: torch.nn.Module, data: object, steps: int, device: str) -> float:
    """Wall seconds of one `optimize` call of `steps` steps, synchronised at its end."""
    cfg = Config(**{**raw, "steps": steps})
    loader = DatasetGeneratedDataLoader(data, batch_size=cfg.batch_size, shuffle=False)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        optimize(
            target_model=target,
            config=cfg,
            device=device,
            train_loader=loader,
            eval_loader=loader,
            n_eval_steps=1,
            out_dir=Path(out),
        )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bench", choices=["tms", "resid"])
    parser.add_argument("steps", help="two run lengths, short,long")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    short, long = (int(s) for s in args.steps.split(","))
    raw, target, data = workload(args.bench, args.device)
    # an untimed run first: one-time costs (lazy imports, CUDA context and kernels, allocator)
    # would otherwise land in whichever timed run comes first
    run_seconds(raw, target, data, short, args.device)
    seconds = {n: run_seconds(raw, target, data, n, args.device) for n in (short, long)}
    s_per_step = (seconds[long] - seconds[short]) / (long - short)
    print(
        json.dumps(
            {
                "reference": "spd@3f0bb61e",
                "bench": args.bench,
                "batch": raw["batch_size"],
                "steps": [short, long],
                "seconds": [seconds[short], seconds[long]],
                "s_per_step": s_per_step,
                "device": args.device,
                "device_name": torch.cuda.get_device_name()
                if args.device.startswith("cuda")
                else "cpu",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
