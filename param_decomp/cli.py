"""`param-decomp` command line: train-target, pretrain, study, reproduce, decompose, eval, export,
harvest, ablate, plan, check-goldens, browse.

Config problems exit with code 2 and a one-screen message, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process (see docs/devices.md)")
    group.add_argument("--coordinator", help="HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, help="total processes (or JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, help="this process's index (or JAX_PROCESS_ID)")


def _add_run_folder_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue the run from its latest checkpoint"
    )
    group.add_argument(
        "--overwrite", action="store_true", help="replace a run folder that has checkpoints"
    )


def _init_distributed(args: argparse.Namespace) -> None:
    """Join the multi-process mesh before anything touches devices."""
    coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator is None:
        return
    import jax

    num = args.num_processes or int(os.environ["JAX_NUM_PROCESSES"])
    pid = args.process_id if args.process_id is not None else int(os.environ["JAX_PROCESS_ID"])
    # CPU processes need gloo to form one mesh; GPU/TPU backends bring their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)


def _lm_run_pass(
    sub: argparse._SubParsersAction, name: str, help_text: str, step_help: str
) -> argparse.ArgumentParser:
    """A pass over an LM decomposition run's checkpoint (harvest, ablate): RUN_DIR and --step;
    `_finish_lm_run_pass` adds what every such pass takes last."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("run_dir", metavar="RUN_DIR", help="an LM decomposition run folder")
    p.add_argument("--step", type=int, help=step_help)
    return p


def _finish_lm_run_pass(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runs-dir", help="runs folder that holds the cached target (default: RUN_DIR's parent)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    _add_distributed_args(p)


def _add_harvest_parser(sub: argparse._SubParsersAction) -> None:
    p = _lm_run_pass(
        sub,
        "harvest",
        "one pass of a decomposition checkpoint over N tokens of its corpus: per component "
        "firing, top contexts, samples, input/output tokens, co-activation (parquet tables)",
        "checkpoint step (default: the latest)",
    )
    p.add_argument("--tokens", type=int, default=1_000_000, help="tokens to read (whole batches)")
    p.add_argument("--split", choices=("train", "val"), default="train", help="corpus split")
    p.add_argument("--top-k", type=int, default=20, help="top contexts per component")
    p.add_argument("--context", type=int, default=16, help="context: +-this many tokens")
    p.add_argument("--reservoir", type=int, default=20, help="sampled contexts per component")
    p.add_argument("--coact-top", type=int, default=20, help="co-active partners per component")
    p.add_argument(
        "--top-tokens", type=int, default=20, help="input/output tokens kept per component"
    )
    p.add_argument("--batch-size", type=int, help="windows per batch (default: the run's)")
    p.add_argument("--seed", type=int, help="window order and reservoir seed (default: the run's)")
    p.add_argument("--save-every", type=int, default=200, help="batches between progress saves")
    p.add_argument("--resume", action="store_true", help="continue a stopped harvest")
    _finish_lm_run_pass(p)


def _add_ablate_parser(sub: argparse._SubParsersAction) -> None:
    p = _lm_run_pass(
        sub,
        "ablate",
        "after a harvest: remove each component where it fires (its reservoir and top "
        "contexts) and record the change of the next-token prediction (parquet tables)",
        "harvested checkpoint step (default: the latest)",
    )
    p.add_argument(
        "--contexts", type=int, default=4, help="contexts per component from each sample"
    )
    p.add_argument("--top-tokens", type=int, default=10, help="tokens kept each way")
    p.add_argument("--batch-size", type=int, help="ablations per batch (default: the harvest's)")
    _finish_lm_run_pass(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="param-decomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train-target", help="train a toy target model and cache it under runs/targets/"
    )
    p.add_argument("config", help="target YAML, e.g. configs/targets/tms_5-2.yaml")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    _add_run_folder_args(p)

    p = sub.add_parser(
        "pretrain",
        help="pretrain an LM target (Llama or GPT-2) on text and cache it under runs/targets/",
    )
    p.add_argument("config", help="pretrain YAML, e.g. configs/targets/llama_tiny.yaml")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    _add_run_folder_args(p)

    p = sub.add_parser(
        "study",
        help="run a grid of pretraining runs (cells x seeds) not yet done and write it up",
    )
    p.add_argument("config", help="study YAML, e.g. configs/studies/objectives.yaml")
    p.add_argument("--runs-dir", default="runs", help="where results and caches go (default: runs)")
    p.add_argument(
        "--render-only", action="store_true", help="run nothing; render the runs that are done"
    )
    p.add_argument("--quiet", action="store_true", help="one line per run, not per log step")

    p = sub.add_parser(
        "sweep",
        help="run a grid of decomposition configs (cells of overrides) not yet done, then draw "
        "the sparsity/faithfulness Pareto figure and table",
    )
    p.add_argument("config", help="sweep YAML, e.g. configs/sweeps/sparse_faithful.yaml")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    p.add_argument(
        "--render-only", action="store_true", help="run nothing; render the cells that are done"
    )
    p.add_argument("--only", nargs="+", metavar="CELL", help="run only these cells")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "reproduce",
        help="the SPD paper's toy experiments: run those not done, write docs/paper_toys.md",
    )
    from param_decomp.study.reproduce_command import add_reproduce_args

    add_reproduce_args(p)

    p = sub.add_parser(
        "decompose", help="decompose a target's weights (trains the target if missing)"
    )
    p.add_argument("config", help="decomposition YAML, e.g. configs/tms_5-2.yaml")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    p.add_argument("--steps", type=int, help="override train.steps (quick looks)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (the summary still prints)"
    )
    _add_run_folder_args(p)
    _add_distributed_args(p)

    p = sub.add_parser(
        "eval",
        help="evaluate a decomposition run's checkpoint again: fast tier, eval JSON, figures",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a decomposition run folder, e.g. runs/tms_5-2"
    )
    p.add_argument("--step", type=int, help="checkpoint step to evaluate (default: the latest)")
    p.add_argument(
        "--runs-dir",
        help="runs folder that holds the cached target (default: RUN_DIR's parent)",
    )

    p = sub.add_parser(
        "export",
        help="write a pretrained LM target (Llama, GPT-2) as a Hugging Face folder: config.json, "
        "model.safetensors, tokenizer.json",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a pretrain run folder (runs/targets/NAME)")
    p.add_argument("out", metavar="OUT", help="the Hugging Face folder to write")
    p.add_argument("--step", type=int, help="checkpoint step (default: the run's last)")
    p.add_argument(
        "--runs-dir", help="runs folder holding the cached tokenizer (default: RUN_DIR/../..)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")

    _add_harvest_parser(sub)
    _add_ablate_parser(sub)

    p = sub.add_parser(
        "plan",
        help="compile a config's train step from shapes on N simulated devices: bytes per "
        "device, FLOPs, collectives, and whether it fits a budget (exit 1 if not)",
    )
    from param_decomp.plan.command import add_plan_args

    add_plan_args(p)

    p = sub.add_parser(
        "check-goldens", help="evaluate every golden case in DIR with this project's code"
    )
    p.add_argument("dir", help="folder of golden *.json files (e.g. ../shared/goldens)")

    p = sub.add_parser(
        "browse",
        help="write a static, offline component browser (HTML) from RUN_DIR/harvest/step_N",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder holding harvest/step_N/")
    p.add_argument("--out", help="output folder (default: RUN_DIR/browse)")
    p.add_argument("--step", type=int, help="harvested step to show (default: the newest)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from param_decomp.config.loading import load_target_config
    from param_decomp.runconfig.decompose import load_decompose_config
    from param_decomp.train.loggers import check_logging_available

    folder = {
        "resume": getattr(args, "resume", False),
        "overwrite": getattr(args, "overwrite", False),
    }
    if args.command == "train-target":
        from param_decomp.jobs.train_target import train_target
        from param_decomp.runconfig.any_config import load_job_target

        load_job_target(args.config, "train-target")  # an LM YAML: one sentence, exit 2
        cfg = load_target_config(args.config)
        check_logging_available(cfg.logging, args.config)
        train_target(cfg, Path(args.runs_dir), config_path=args.config, **folder)
        return 0
    if args.command == "pretrain":
        from param_decomp.config.pretrain_schema import load_pretrain_config
        from param_decomp.jobs.pretrain import pretrain
        from param_decomp.runconfig.any_config import load_job_target

        load_job_target(args.config, "pretrain")  # a toy YAML: one sentence, exit 2
        cfg = load_pretrain_config(args.config)
        check_logging_available(cfg.logging, args.config)
        pretrain(cfg, Path(args.runs_dir), config_path=args.config, **folder)
        return 0
    if args.command == "reproduce":
        from param_decomp.study.reproduce_command import run_reproduce_command

        return run_reproduce_command(args)
    if args.command == "sweep":
        from param_decomp.study.pareto import render as render_sweep
        from param_decomp.study.sweep import run_sweep
        from param_decomp.study.sweep_schema import load_sweep

        sweep = load_sweep(args.config)
        unknown = sorted(set(args.only or []) - {c.cell.name for c in sweep.cells})
        if unknown:
            names = [c.cell.name for c in sweep.cells]
            print(
                f"error: --only {unknown}: no such cell in {args.config}; cells: {names}",
                file=sys.stderr,
            )
            return 2
        if not args.render_only:
            run_sweep(sweep, Path(args.runs_dir), args.only, quiet=args.quiet)
        md, plot, curves = render_sweep(sweep, Path(args.runs_dir), args.config)
        print(f"sweep {sweep.config.name}: wrote {md}, {plot} and {curves}")
        return 0
    if args.command == "study":
        from param_decomp.study.grid import run_grid
        from param_decomp.study.render import render
        from param_decomp.study.schema import load_study

        study = load_study(args.config)
        if not args.render_only:
            run_grid(study, Path(args.runs_dir), show_progress=not args.quiet)
        md, plot = render(study, Path(args.runs_dir))
        print(f"study {study.config.name}: wrote {md} and {plot}")
        return 0
    if args.command == "decompose":
        _init_distributed(args)
        cfg = load_decompose_config(args.config)  # a config error exits before the job's imports
        from param_decomp.jobs.decompose import run_decompose

        if args.steps is not None:
            cfg = cfg.model_copy(
                update={"train": cfg.train.model_copy(update={"steps": args.steps})}
            )
        run_decompose(
            cfg, args.config, Path(args.runs_dir), show_progress=not args.no_progress, **folder
        )
        return 0
    if args.command == "eval":
        from param_decomp.jobs.evaluate import evaluate_run, report

        runs_dir = Path(args.runs_dir) if args.runs_dir else None
        evaluation = evaluate_run(Path(args.run_dir), args.step, runs_dir)
        print(report(evaluation, Path(args.run_dir)))
        return 0
    if args.command == "export":
        from param_decomp.jobs.export import export_run

        out = export_run(
            Path(args.run_dir), Path(args.out), args.step, args.runs_dir, args.overwrite
        )
        print(f"export: wrote {out} (config.json, model.safetensors, tokenizer.json)")
        return 0
    if args.command == "harvest":
        _init_distributed(args)
        from param_decomp.harvest.settings import HarvestSettings
        from param_decomp.jobs.harvest import report, run_harvest

        keys = ("tokens", "split", "top_k", "context", "reservoir", "coact_top", "top_tokens")
        settings = HarvestSettings(
            **{k: getattr(args, k) for k in keys}, batch_size=args.batch_size, seed=args.seed
        )
        result = run_harvest(
            Path(args.run_dir),
            settings,
            args.step,
            args.resume,
            Path(args.runs_dir) if args.runs_dir else None,
            save_every=args.save_every,
            show_progress=not args.no_progress,
        )
        print(report(result))
        return 0
    if args.command == "ablate":
        _init_distributed(args)
        from param_decomp.harvest.settings import AblationSettings
        from param_decomp.jobs.ablate import report, run_ablation

        ablation = run_ablation(
            Path(args.run_dir),
            AblationSettings(args.contexts, args.top_tokens, args.batch_size),
            args.step,
            Path(args.runs_dir) if args.runs_dir else None,
            show_progress=not args.no_progress,
        )
        print(report(ablation))
        return 0
    if args.command == "plan":
        from param_decomp.plan.command import run_plan

        load_decompose_config(args.config)  # a config error exits 2 before any child starts
        return run_plan(args)
    if args.command == "check-goldens":
        from param_decomp.goldens.runner import check_goldens_dir

        return check_goldens_dir(Path(args.dir))
    if args.command == "browse":
        from param_decomp.browse.site import write_site
        from param_decomp.browse.tables import BrowseError

        run_dir = Path(args.run_dir)
        if not (run_dir / "harvest").exists() and (run_dir / "checkpoints").is_dir():
            from param_decomp.config.target_kinds import refuse
            from param_decomp.jobs.evaluate import run_target_kind

            refuse(run_target_kind(run_dir), "browse", run_dir, key="target")  # a toy's run
        try:
            out = Path(args.out) if args.out else None
            site = write_site(Path(args.run_dir), out, args.step)
        except BrowseError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(
            f"browse: {site.component_pages} component pages from {site.harvest} in "
            f"{site.seconds:.1f} s; open {site.index.resolve().as_uri()}"
        )
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    """Run a command; every expected failure is one message and a documented exit code
    (docs/reliability.md), never a traceback."""
    from param_decomp.config.errors import ConfigError
    from param_decomp.targets.hf.errors import HFCheckpointError, HFExportError
    from param_decomp.text.tokenizers import DataError
    from param_decomp.train.checkpoint import CheckpointError
    from param_decomp.train.run_dir import RunDirError
    from param_decomp.train.run_loop import (
        EXIT_NONFINITE,
        EXIT_PREEMPTED,
        EXIT_USAGE,
        NonFiniteLossError,
        Preempted,
    )

    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_USAGE
    except DataError as err:  # bad corpus or tokenizer file: name it, no traceback
        print(f"data error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (RunDirError, CheckpointError, HFCheckpointError, HFExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except Preempted as err:
        print(str(err), file=sys.stderr)
        return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
