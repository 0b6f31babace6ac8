"""The reference's side of the `lm` bench: its own LM experiment code, timed step by step.

Runs inside the reference's venv, from the snapshot's folder (bench/lm_pair.py calls
`../shared/reference/run.sh python bench/reference_lm_harness.py ...`). It calls
`spd.experiments.lm.lm_decomposition.main` (the reference's LM entry point: its Hugging Face
target loading, its `load_dataset` data loader, `run_experiment` -> `optimize`) with a config
written to match bench/configs/lm_pair.yaml, on the exported Hugging Face folder and a local
parquet of the same token windows. Nothing reaches the network (HF_*_OFFLINE).

Why the loop is timed through `tqdm`: `optimize` is one function with no hook; it iterates
`tqdm(range(steps + 1))`, so wrapping that iterator gives a timestamp at the start of every
step without touching the reference's code. s/step is the mean over the steps after `--skip`
(step 0 runs its eval and logging, the first steps warm torch's allocator), up to the last
step's start (the last step only logs and saves). Prints one JSON line.

    run.sh python bench/reference_lm_harness.py --model DIR --data DIR --steps 40 --skip 5
"""

import argparse
import json
import os
import tempfile
import time

os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    WANDB_MODE="disabled",
    TOKENIZERS_PARALLELISM="false",
)
os.environ.setdefault("SPD_OUT_DIR", tempfile.mkdtemp(prefix="ref_lm_"))
import reference_stubs  # noqa: E402  (beside this script: its folder is on sys.path)

reference_stubs.install()

import spd.run_spd as run_spd  # noqa: E402
import torch  # noqa: E402
from spd.experiments.lm import lm_decomposition  # noqa: E402


def reference_config(args: argparse.Namespace) -> dict:
    """bench/configs/lm_pair.yaml in the reference's schema (its ss_llama_simple_mlp recipe)."""
    return {
        "wandb_project": None,
        "seed": 0,
        "autocast_bf16": args.bf16,  # its default is True; this project computes in fp32
        "n_mask_samples": 1,
        "ci_fn_type": "shared_mlp",  # one MLP per site on the site input, C outputs
        "ci_fn_hidden_dims": [args.ci_hidden],
        "sampling": "continuous",
        "sigmoid_type": "leaky_hard",
        "module_info": [
            {"module_pattern": "model.layers.*.mlp.*_proj", "C": args.C},
            {"module_pattern": "model.layers.1.self_attn.v_proj", "C": args.C_v},
        ],
        "use_delta_component": True,
        "loss_metric_configs": [
            {"classname": "FaithfulnessLoss", "coeff": 1.0e6},
            {
                "classname": "ImportanceMinimalityLoss",
                "coeff": 2.0e-3,
                "pnorm": 2.0,
                "beta": 0.0,
                "p_anneal_start_frac": 0.0,
                "p_anneal_final_p": 0.4,
                "p_anneal_end_frac": 1.0,
                "eps": 1.0e-12,
            },
            {"classname": "StochasticReconSubsetLoss", "coeff": 0.5},
            {
                "classname": "PGDReconSubsetLoss",
                "coeff": 0.5,
                "init": "random",
                "step_size": 1.0,
                "n_steps": 1,
                "mask_scope": "shared_across_batch",
            },
        ],
        "output_loss_type": "kl",
        "steps": args.steps,
        "batch_size": args.batch,
        "faithfulness_warmup_steps": 0,
        "lr_schedule": {
            "start_val": 2.0e-4,
            "fn_type": "cosine",
            "warmup_pct": 0.0,
            "final_val_frac": 0.1,
        },
        "train_log_freq": 10**9,
        "eval_freq": 10**9,
        "eval_batch_size": args.batch,
        "slow_eval_freq": 10**9,
        "n_eval_steps": 1,
        "slow_eval_on_first_step": False,
        "save_freq": None,
        "eval_metric_configs": [],
        "ci_alive_threshold": 0.0,
        "pretrained_model_class": "transformers.LlamaForCausalLM",
        "pretrained_model_name": args.model,
        "pretrained_model_output_attr": "logits",
        "tokenizer_name": args.model,
        "task_config": {
            "task_name": "lm",
            "max_seq_len": args.seq,
            "dataset_name": args.data,
            "column_name": "input_ids",
            "train_data_split": "train",
            "eval_data_split": "test",
            "shuffle_each_epoch": True,
            "is_tokenized": True,
            "streaming": False,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="the exported Hugging Face folder")
    p.add_argument("--data", required=True, help="folder with train.parquet / test.parquet")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the timing")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--C", type=int, default=256)
    p.add_argument("--C-v", dest="C_v", type=int, default=128)
    p.add_argument("--ci-hidden", type=int, default=128)
    p.add_argument("--bf16", action="store_true", help="the reference's default bf16 autocast")
    args = p.parse_args()

    stamps: list[float] = []
    real_tqdm = run_spd.tqdm

    def timed_tqdm(iterable, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        for item in real_tqdm(iterable, *a, **{**kw, "disable": True}):
            stamps.append(time.perf_counter())
            yield item

    timed_tqdm.write = real_tqdm.write  # step 0 logs through tqdm.write
    run_spd.tqdm = timed_tqdm
    t0 = time.perf_counter()
    lm_decomposition.main(config_json=json.dumps(reference_config(args)))
    total = time.perf_counter() - t0
    # stamps[i] = start of step i; steps skip .. steps-1 are whole optimisation steps
    timed = args.steps - args.skip
    s_per_step = (stamps[args.steps] - stamps[args.skip]) / timed
    print(
        json.dumps(
            {
                "reference": "spd@3f0bb61e",
                "bench": "lm",
                "batch": args.batch,
                "seq_len": args.seq,
                "steps": args.steps,
                "steps_timed": timed,
                "s_per_step": s_per_step,
                "tokens_per_s": args.batch * args.seq / s_per_step,
                "wall_s_total": total,
                "autocast_bf16": args.bf16,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
