"""`param-decomp export RUN_DIR OUT`: a pretrained LM target as a Hugging Face folder (S17.8).

Reads the run's saved config and its final checkpoint (or `--step`), and writes `OUT/` with
config.json and model.safetensors (`targets/hf/write.py`, the inverse of the hf reader), and
the run's tokenizer as tokenizer.json, tokenizer_config.json and special_tokens_map.json
(`data/tokenizer_convert.py`). So a model pretrained here can go to transformers or to the
reference, and comes back with `target: {hf: OUT}`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from param_decomp.config.pretrain_schema import pretrain_schema_from_data
from param_decomp.config.target_kinds import YAML_KINDS, refusal
from param_decomp.data.token_store import build_tokenizer
from param_decomp.data.tokenizer_convert import to_hf_tokenizer, write_tokenizer_files
from param_decomp.targets.build import build_lm
from param_decomp.targets.hf.errors import HFExportError
from param_decomp.targets.hf.write import export_problems, write_model_files
from param_decomp.train.checkpoint import restore_module
from param_decomp.train.run_dir import RunDirError, has_checkpoints


def _saved_config(run_dir: Path) -> tuple[Path, dict]:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise RunDirError(
            f"{run_dir}: no config.yaml; export reads the run folder of `param-decomp pretrain` "
            "(runs/targets/<run_name>)"
        )
    try:
        raw = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise RunDirError(f"{saved}: unreadable ({err})") from None
    if not isinstance(raw, dict):
        raise RunDirError(f"{saved}: not a mapping of config keys")
    return saved, raw


def export_run(
    run_dir: str | Path,
    out: str | Path,
    step: int | None = None,
    runs_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the run's model (the checkpoint at `step`, default the final one) and tokenizer
    into `out` as a Hugging Face folder; `runs_dir` (default: two folders above the run)
    holds the cached trained tokenizer. Everything is checked before anything is written,
    and `out` appears whole (written beside it, then renamed)."""
    run_dir, out = Path(run_dir), Path(out)
    saved, raw = _saved_config(run_dir)
    model_type = raw.get("model", {}).get("type") if isinstance(raw.get("model"), dict) else None
    kind = YAML_KINDS.get(model_type) if isinstance(model_type, str) else None
    why = refusal(kind, "export") if kind else f"{model_type!r} is not a target type"
    if why is not None:
        raise HFExportError(saved, [("model.type", why)])
    cfg = pretrain_schema_from_data(raw, saved)
    problems = export_problems(cfg.model)
    if problems:
        raise HFExportError(saved, problems)
    steps = has_checkpoints(run_dir)
    step = cfg.train.steps if step is None else step
    if step not in steps:
        raise RunDirError(
            f"{run_dir}: no checkpoint at step {step} (it has {steps}; the run's last step is "
            f"{cfg.train.steps}): finish the run with `param-decomp pretrain CONFIG --resume`, "
            "or pass --step"
        )
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise HFExportError(out, [("", "exists and is not empty; --overwrite replaces it")])
    tokenizer = build_tokenizer(cfg.data, Path(runs_dir) if runs_dir else run_dir.parent.parent)
    converted = to_hf_tokenizer(tokenizer)
    target = restore_module(run_dir / "checkpoints", build_lm(cfg.model, cfg.seed), step)
    # explicit nulls: transformers' own defaults (GPT-2's 50256, Llama's 1 and 2) are wrong here
    vocab = converted.tokenizer.get_vocab(with_added_tokens=True)
    special_ids: dict[str, int | None] = {
        f"{name}_token_id": None if token is None else int(vocab[token])
        for name in ("bos", "pad")
        for token in [getattr(converted, f"{name}_token")]
    }
    special_ids["eos_token_id"] = int(tokenizer.eod_id)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_model_files(target, cfg.model, tmp, special_ids)
        write_tokenizer_files(converted, tmp, cfg.model.seq_len)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
