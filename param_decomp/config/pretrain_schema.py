"""Schema and loader of `param-decomp pretrain` configs (a Llama target trained on text).

Kept apart from `schema.py` because a pretrain config is a different file kind: it names a text
corpus and an LM objective rather than synthetic sparse features. The saved checkpoint lands
where toy targets go (runs/targets/<run_name>/checkpoint), so decomposition finds it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from param_decomp.config.errors import ConfigError, format_validation_error
from param_decomp.config.loading import (
    PATH_CHECK_ERRORS,
    config_boundary,
    path_check_problem,
    read_yaml,
    short_repr,
)
from param_decomp.config.schema import (
    Checkpointing,
    ComputeDtype,
    HFTokenizerSpec,
    LMModel,
    Logging,
    Mesh,
    NonNegFloat,
    Optimizer,
    RunName,
    SentencePieceSpec,
    StrictModel,
    TextData,
)

# The ground floor (text/) holds the corpus catalogue and the tokenizers: the config refuses a
# bad corpus name or a vocabulary mismatch at load time.
from param_decomp.text.catalogue import CORPUS_NAMES, corpus_path_exists
from param_decomp.text.hf_tokenizer import HFTokenizer
from param_decomp.text.tokenizers import TOKENIZER_VOCAB, DataError, SentencePieceTokenizer

# Validation context key: the loader runs the cross-block checks itself so each problem is
# reported under its own dotted key instead of one root-level message.
_DEFER_CROSS_CHECKS = "defer_cross_checks"


class Objective(StrictModel):
    """Training loss; every kind is a function from `param_decomp.losses.lm_objectives`."""

    kind: Literal["cross_entropy", "focal", "bytes_weighted_ce", "poly1"] = "cross_entropy"
    gamma: NonNegFloat = 2.0
    epsilon: float = 1.0
    z_loss: NonNegFloat = 0.0
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    # Field validators run only on keys present in the file, so defaults never trip these.
    @field_validator("gamma", "epsilon")
    @classmethod
    def _only_for_its_kind(cls, value: float, info: ValidationInfo) -> float:
        kind = info.data.get("kind")
        needed = {"gamma": "focal", "epsilon": "poly1"}[info.field_name]
        if kind is not None and kind != needed:
            raise ValueError(f"only applies to kind: {needed} (kind is {kind!r})")
        return value

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing_only_for_ce(cls, value: float, info: ValidationInfo) -> float:
        kind = info.data.get("kind")
        if value > 0 and kind is not None and kind != "cross_entropy":
            raise ValueError(f"only applies to kind: cross_entropy (kind is {kind!r})")
        return value


class PretrainTraining(StrictModel):
    steps: PositiveInt
    batch_size: PositiveInt
    optimizer: Optimizer
    log_every: PositiveInt = 100
    eval_every: PositiveInt = 500
    compute_dtype: ComputeDtype = Field(
        default="float32",
        description="LM compute dtype; bfloat16 keeps fp32 master weights, norms, softmax, logits",
    )


class PretrainConfig(StrictModel):
    """`param-decomp pretrain` config; the trained model is cached in runs/targets/<run_name>."""

    run_name: RunName
    seed: int = 0
    model: LMModel
    data: TextData = TextData()
    train: PretrainTraining
    objective: Objective = Objective()
    checkpointing: Checkpointing = Checkpointing()
    mesh: Mesh = Mesh()
    logging: Logging = Logging()

    @property
    def seq_len(self) -> int:
        """Training context length: data.seq_len if set, else the model's."""
        return self.data.seq_len or self.model.seq_len

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> PretrainConfig:
        if info.context and info.context.get(_DEFER_CROSS_CHECKS):
            return self
        problems = cross_block_problems(self)
        if problems:
            raise ValueError("; ".join(f"{key}: {msg}" for key, msg in problems))
        return self


def tokenizer_vocab(tokenizer: str | SentencePieceSpec | HFTokenizerSpec) -> int:
    """Vocabulary size the tokenizer spec produces (loads a given .model or tokenizer.json
    file to read it)."""
    if isinstance(tokenizer, str):
        return TOKENIZER_VOCAB[tokenizer]
    if isinstance(tokenizer, HFTokenizerSpec):
        return HFTokenizer.from_path(tokenizer.path).vocab_size
    if tokenizer.vocab_size is not None:
        return tokenizer.vocab_size
    return SentencePieceTokenizer.from_file(tokenizer.model).vocab_size


def tokenizer_file_key(tokenizer: str | SentencePieceSpec | HFTokenizerSpec) -> str:
    """The dotted key naming the tokenizer's file, for error messages."""
    return (
        "data.tokenizer.path" if isinstance(tokenizer, HFTokenizerSpec) else "data.tokenizer.model"
    )


def cross_block_problems(cfg: PretrainConfig) -> list[tuple[str, str]]:
    """Checks spanning blocks, as (dotted key, message): vocab matches the tokenizer."""
    tok = cfg.data.tokenizer
    try:
        vocab = tokenizer_vocab(tok)
    except DataError as err:
        return [(tokenizer_file_key(tok), err.message + f" ({err.path})")]
    except PATH_CHECK_ERRORS as err:  # e.g. a name too long, a folder we may not enter
        given = tok.path if isinstance(tok, HFTokenizerSpec) else getattr(tok, "model", tok)
        return [(tokenizer_file_key(tok), path_check_problem(str(given), err))]
    if cfg.model.vocab_size != vocab:
        if isinstance(tok, str):
            name = tok
        elif isinstance(tok, HFTokenizerSpec):
            name = f"hf {tok.path}"
        else:
            name = f"sentencepiece {tok.model or tok.vocab_size}"
        msg = f"is {cfg.model.vocab_size}, but tokenizer {name!r} has {vocab} tokens"
        return [("model.vocab_size", msg)]
    return []


def pretrain_schema_from_data(data: dict, path: str | Path) -> PretrainConfig:
    """`data` checked against the schema alone (a ConfigError naming `path` and the key), not
    against the files it names: a finished run's saved config is read this way (`export`), its
    corpus or tokenizer file may have moved since. A saved config holds every default, so the
    objective's keys that hold their defaults are dropped first (its kind-specific keys are
    refused under another kind)."""
    objective = data.get("objective")
    if isinstance(objective, dict):
        defaults = Objective().model_dump()
        kept = {k: v for k, v in objective.items() if k == "kind" or v != defaults.get(k, object())}
        data = {**data, "objective": kept}
    try:
        return PretrainConfig.model_validate(data, context={_DEFER_CROSS_CHECKS: True})
    except pydantic.ValidationError as err:
        raise ConfigError(path, format_validation_error(err, PretrainConfig, data=data)) from None


@config_boundary
def load_pretrain_config(path: str | Path) -> PretrainConfig:
    """Validated pretrain config; every problem is a ConfigError naming the file and key."""
    return pretrain_config_from_data(read_yaml(path), path)


def pretrain_config_from_data(data: dict, path: str | Path) -> PretrainConfig:
    """`data` (a parsed pretrain YAML mapping) validated, with the tokenizer and corpus checks;
    problems are a ConfigError naming `path` and the dotted key."""
    try:
        cfg = PretrainConfig.model_validate(data, context={_DEFER_CROSS_CHECKS: True})
    except pydantic.ValidationError as err:
        raise ConfigError(path, format_validation_error(err, PretrainConfig, data=data)) from None
    problems = cross_block_problems(cfg)
    try:
        if not corpus_path_exists(cfg.data.corpus):
            problems.append(
                (
                    "data.corpus",
                    f"file {short_repr(cfg.data.corpus, 200)} not found "
                    f"(or name one of {list(CORPUS_NAMES)})",
                )
            )
    except PATH_CHECK_ERRORS as err:
        problems.append(("data.corpus", path_check_problem(cfg.data.corpus, err)))
    if problems:
        raise ConfigError(path, problems)
    return cfg
