"""The kinds of target the project decomposes, in one table that every dispatch reads.

A target is a toy (trained here on sparse features, `train-target`), an LM pretrained here
(`pretrain`), or a Hugging Face folder (`target: {hf: FOLDER}`). Loading a target YAML, training
it, feeding it data, harvesting, browsing and exporting it all ask this table what the kind
is, so a new model family is one row here (plus its schema and model class), and a job that
does not apply to a kind says so in one sentence (`refusal`) before anything is written.
`docs/targets.md` is this table as prose; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from param_decomp.config.errors import ConfigError

Source = Literal["toy", "pretrained", "hf"]
JOBS = ("train-target", "pretrain", "decompose", "eval", "harvest", "browse", "export", "plan")


@dataclass(frozen=True)
class TargetKind:
    """One kind of target: where it comes from and the model type that names it (a target
    YAML's `model.type`; for a Hugging Face folder its config.json `model_type`, with the
    `architectures` it is also recognised by)."""

    name: str
    source: Source
    model_type: str
    architectures: tuple[str, ...] = ()

    @property
    def lm(self) -> bool:
        """Reads token windows of a corpus (harvest and browse need them), not sparse features."""
        return self.source != "toy"


KINDS: tuple[TargetKind, ...] = (
    TargetKind("tms", "toy", "tms"),
    TargetKind("resid_mlp", "toy", "resid_mlp"),
    TargetKind("llama", "pretrained", "llama"),
    TargetKind("gpt2", "pretrained", "gpt2"),
    TargetKind("hf:llama", "hf", "llama", ("LlamaForCausalLM", "LlamaModel")),
    TargetKind("hf:qwen3", "hf", "qwen3", ("Qwen3ForCausalLM", "Qwen3Model")),
    TargetKind("hf:gpt2", "hf", "gpt2", ("GPT2LMHeadModel", "GPT2Model")),
)

YAML_KINDS: dict[str, TargetKind] = {k.model_type: k for k in KINDS if k.source != "hf"}
HF_KINDS: dict[str, TargetKind] = {k.model_type: k for k in KINDS if k.source == "hf"}

# why a job does not apply to a kind's source, as the sentence the user reads
_NOT_FOR: dict[tuple[str, Source], str] = {
    ("train-target", "pretrained"): "an LM learns from text: run `param-decomp pretrain` on it",
    ("train-target", "hf"): "a Hugging Face folder is already trained",
    ("pretrain", "toy"): "a toy learns from sparse features: run `param-decomp train-target` on it",
    ("pretrain", "hf"): "a Hugging Face folder is already trained",
    ("harvest", "toy"): "a harvest reads token contexts, so it applies to LM targets only",
    ("browse", "toy"): "browse shows a harvest, and harvests apply to LM targets only",
    ("export", "toy"): "export writes LM targets as Hugging Face folders, and a toy is no LM",
    ("export", "hf"): "the target already is a Hugging Face folder",
}


def yaml_kind(model_type: object, path: str | Path = "target config") -> TargetKind:
    """The kind a target YAML's `model.type` names; any other type is a ConfigError naming the
    allowed ones."""
    if isinstance(model_type, str) and model_type in YAML_KINDS:
        return YAML_KINDS[model_type]
    allowed = ", ".join(YAML_KINDS)
    raise ConfigError(path, [("model.type", f"{model_type!r} is not a target type: {allowed}")])


def kind_named(name: str) -> TargetKind:
    """The kind by its registry name (`tms`, `gpt2`, `hf:qwen3`, ...)."""
    return {k.name: k for k in KINDS}[name]


def refusal(kind: TargetKind, job: str) -> str | None:
    """The one sentence saying why `job` does not apply to `kind`, or None when it does."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
    why = _NOT_FOR.get((job, kind.source))
    return None if why is None else f"`{job}` does not apply to a {kind.name} target: {why}"


def refuse(kind: TargetKind, job: str, path: str | Path, key: str = "model.type") -> None:
    """Raise `refusal` as a ConfigError (exit 2, nothing written) when `job` does not apply."""
    why = refusal(kind, job)
    if why is not None:
        raise ConfigError(path, [(key, why)])
