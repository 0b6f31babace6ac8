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

# Upward, by design (README: Imports): data/ owns the corpus catalogue and the tokenizers; the
# config layer reads them to refuse a bad corpus name or a vocabulary mismatch at load time.
from param_decomp.data.corpora import CORPUS_NAMES, corpus_path_exists
from param_decomp.data.tokenizers import TOKENIZER_VOCAB, DataError, SentencePieceTokenizer

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


def tokenizer_vocab(tokenizer: str | SentencePieceSpec) -> int:
    """Vocabulary size the tokenizer spec produces (loads a given .model file to read it)."""
    if isinstance(tokenizer, str):
        return TOKENIZER_VOCAB[tokenizer]
    if tokenizer.vocab_size is not None:
        return tokenizer.vocab_size
    return SentencePieceTokenizer.from_file(tokenizer.model).vocab_size


def cross_block_problems(cfg: PretrainConfig) -> list[tuple[str, str]]:
    """Checks spanning blocks, as (dotted key, message): vocab matches the tokenizer."""
    tok = cfg.data.tokenizer
    try:
        vocab = tokenizer_vocab(tok)
    except DataError as err:
        return [("data.tokenizer.model", err.message + f" ({err.path})")]
    except PATH_CHECK_ERRORS as err:  # e.g. a name too long, a folder we may not enter
        model = tok.model if isinstance(tok, SentencePieceSpec) else str(tok)
        return [("data.tokenizer.model", path_check_problem(str(model), err))]
    if cfg.model.vocab_size != vocab:
        name = tok if isinstance(tok, str) else f"sentencepiece {tok.model or tok.vocab_size}"
        msg = f"is {cfg.model.vocab_size}, but tokenizer {name!r} has {vocab} tokens"
        return [("model.vocab_size", msg)]
    return []


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
