"""Pydantic schema of every YAML file the project reads.

Every model forbids unknown keys so a typo is an error, never a silently ignored setting.
Loss terms are a tagged list (`- type: faithfulness ...`); the term classes themselves live in
`param_decomp.losses` and register their config model there, so adding a term never touches
this file.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

NonNegFloat = Annotated[float, Field(ge=0.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

RUN_NAME_MAX_CHARS = 128
_RUN_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]")
_RUN_NAME_RULE = (
    f"a plain folder name: 1 to {RUN_NAME_MAX_CHARS} of the ASCII letters A-Z a-z, "
    "digits 0-9, '-', '_' and '.', not '.' or '..'"
)


def _check_run_name(value: str) -> str:
    """`run_name` becomes the folder `<runs-dir>/<run_name>` (or `<runs-dir>/targets/...`), so it
    must be one plain path segment: no separator, no `..`, no absolute path, no control or NUL
    character. Only ASCII letters, digits, `-`, `_` and `.` are allowed; non-ASCII letters are
    refused on purpose (look-alike characters; file systems that normalize unicode differently
    could map two spellings to one folder)."""
    if not value:
        raise ValueError(f"must not be empty; expected {_RUN_NAME_RULE}")
    if len(value) > RUN_NAME_MAX_CHARS:
        raise ValueError(f"has {len(value)} characters; expected {_RUN_NAME_RULE}")
    bad = [c for c in dict.fromkeys(value) if not _RUN_NAME_CHARS.fullmatch(c)]
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise ValueError(f"{value[:40]!r} holds {shown}; expected {_RUN_NAME_RULE}")
    if set(value) == {"."}:
        raise ValueError(f"{value!r} is not a folder name; expected {_RUN_NAME_RULE}")
    return value


RunName = Annotated[
    str,
    AfterValidator(_check_run_name),
    Field(description="folder name of the run under --runs-dir (see _check_run_name)"),
]


class StrictModel(BaseModel):
    """Base for every config block: unknown keys are errors, instances are immutable, and a float
    must be finite (`.inf`, `.nan`, `1e400` are refused where a number is expected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------- data


class SparseFeatureData(StrictModel):
    """Synthetic sparse features (SPEC §Data): each feature present w.p. `feature_probability`."""

    feature_probability: Annotated[float, Field(gt=0.0, le=1.0)]
    mode: Literal["at_least_zero_active", "exactly_one_active", "exactly_two_active"] = (
        "at_least_zero_active"
    )
    value_range: tuple[float, float] = (0.0, 1.0)

    @field_validator("value_range")
    @classmethod
    def _range_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not lo < hi:
            raise ValueError(f"must be [low, high] with low < high, got [{lo}, {hi}]")
        return value


# ----------------------------------------------------------------------------- schedules


class Schedule(StrictModel):
    """Learning-rate schedule (SPEC S10): linear warmup from 0, then decay to final."""

    kind: Literal["constant", "linear", "cosine"] = "constant"
    warmup_pct: Fraction = 0.0
    final_val_frac: NonNegFloat = 1.0


class Optimizer(StrictModel):
    """AdamW with a schedule and optional global-norm clipping."""

    lr: PositiveFloat
    schedule: Schedule = Schedule()
    weight_decay: NonNegFloat = 0.0
    b1: Fraction = 0.9
    b2: Fraction = 0.999
    grad_clip_norm: PositiveFloat | None = None


# ----------------------------------------------------------------------------- targets


class TMSModel(StrictModel):
    """Toy model of superposition: x -> W1 -> [hidden layers] -> W2 (+bias) -> ReLU."""

    type: Literal["tms"]
    n_features: PositiveInt
    n_hidden: PositiveInt
    n_hidden_layers: Annotated[int, Field(ge=0)] = 0
    tied_weights: bool = True
    init_bias_to_zero: bool = False


class ResidMLPModel(StrictModel):
    """Residual MLP: fixed embedding, `n_layers` ReLU MLPs added to the stream, W_U = W_E^T."""

    type: Literal["resid_mlp"]
    n_features: PositiveInt
    d_embed: PositiveInt
    d_mlp: PositiveInt
    n_layers: Annotated[int, Field(ge=1, le=3)] = 1
    label_coeff: float = 1.0


class _LMFields(StrictModel):
    """What every LM target's config has: sizes, context, the logit soft-cap."""

    vocab_size: PositiveInt
    d_model: PositiveInt
    n_heads: PositiveInt
    d_mlp: PositiveInt
    n_layers: PositiveInt = 1
    seq_len: PositiveInt = 16
    logit_soft_cap: PositiveFloat | None = Field(
        default=None, description="logits -> cap * tanh(logits / cap); none when omitted"
    )


class LlamaModel(_LMFields):
    """Small Llama-style causal LM: RMSNorm, RoPE attention, SwiGLU MLP."""

    type: Literal["llama"]
    tied_head: bool = Field(default=False, description="logits from the embedding transposed")

    @model_validator(mode="after")
    def _heads_divide(self) -> LlamaModel:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model ({self.d_model}) must be n_heads ({self.n_heads}) times an even head size"
            )
        return self


class GPT2Model(_LMFields):
    """Small GPT-2-style causal LM: LayerNorm, learned positions, GELU MLP, biases."""

    type: Literal["gpt2"]
    tied_head: bool = Field(default=True, description="logits from the embedding transposed")

    @model_validator(mode="after")
    def _heads_divide(self) -> GPT2Model:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            )
        return self


LMModel = Annotated[LlamaModel | GPT2Model, Field(discriminator="type")]
TargetModel = Annotated[
    TMSModel | ResidMLPModel | LlamaModel | GPT2Model, Field(discriminator="type")
]


class TargetTraining(StrictModel):
    steps: PositiveInt
    batch_size: PositiveInt
    optimizer: Optimizer
    log_every: PositiveInt = 500


class TargetConfig(StrictModel):
    """`param-decomp train-target` config: what to train and how; cached in runs/targets/."""

    run_name: RunName
    seed: int = 0
    model: TargetModel
    data: SparseFeatureData
    train: TargetTraining
    checkpointing: Checkpointing = Field(default_factory=lambda: Checkpointing())


# ----------------------------------------------------------------------------- decomposition


class CIFunction(StrictModel):
    """Causal-importance function (SPEC §CI): which inputs it reads and its hidden widths."""

    type: Literal["per_component_mlp", "per_site_mlp", "global_mlp"] = "per_component_mlp"
    hidden: list[PositiveInt] = [16]


class Decomposition(StrictModel):
    C: PositiveInt
    sites: list[str] = Field(min_length=1)
    tied_sites: dict[str, str] = {}
    ci_function: CIFunction = CIFunction()
    squashing: Literal["leaky_hard"] = "leaky_hard"
    leaky_alpha: PositiveFloat = 0.01
    init_scale: PositiveFloat = 1.0

    @field_validator("tied_sites")
    @classmethod
    def _ties_refer_to_sites(cls, ties: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        sites = info.data.get("sites", [])
        for tied, source in ties.items():
            if tied not in sites or source not in sites:
                raise ValueError(f"entry {tied}: {source} must name two of sites {sites}")
            if source in ties:
                raise ValueError(f"source {source} is itself tied")
        return ties


class FaithfulnessWarmup(StrictModel):
    """Steps on the faithfulness loss alone (V, U only) before the main loop."""

    steps: Annotated[int, Field(ge=0)] = 0
    lr: PositiveFloat = 0.01
    weight_decay: NonNegFloat = 0.0


class DecomposeTraining(StrictModel):
    steps: PositiveInt
    batch_size: PositiveInt
    optimizer: Optimizer
    faithfulness_warmup: FaithfulnessWarmup = FaithfulnessWarmup()
    log_every: PositiveInt = 100


class Eval(StrictModel):
    ci_alive_threshold: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    every: Annotated[int, Field(ge=0)] = Field(
        default=0, description="fast-tier evaluation every N steps (S14.2); 0 = only at the end"
    )
    n_batches: PositiveInt = 4
    batch_size: PositiveInt = 1024
    figures: bool = Field(default=True, description="write figures at all (S14.7)")
    figures_every: Annotated[int, Field(ge=0)] = Field(
        default=0, description="figure tier every N steps (S14.7); 0 = only at the end"
    )

    @model_validator(mode="after")
    def _figures_every_needs_figures(self) -> Eval:
        if self.figures_every and not self.figures:
            raise ValueError(
                f"figures_every: {self.figures_every} asks for figures but figures is false; "
                "set figures: true or figures_every: 0"
            )
        return self


class Mesh(StrictModel):
    """Device mesh sizes (SPEC §Sharding). One axis may be -1: the remaining devices."""

    data: int = -1
    fsdp: PositiveInt = 1
    tensor: PositiveInt = 1
    shard_target_weights: bool = False

    @field_validator("data")
    @classmethod
    def _data_size(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"must be a positive size or -1 (the remaining devices), got {value}")
        return value


class Checkpointing(StrictModel):
    every: Annotated[int, Field(ge=0)] = 0
    keep: PositiveInt = 2


class DecomposeConfig(StrictModel):
    """`param-decomp decompose` config."""

    run_name: RunName
    seed: int = 0
    target: str = Field(min_length=1, description="path of the target's YAML config")
    decomposition: Decomposition
    losses: list[Any] = Field(min_length=1)  # validated against the loss registry at load
    train: DecomposeTraining
    data: SparseFeatureData | None = None
    eval: Eval = Eval()
    mesh: Mesh = Mesh()
    checkpointing: Checkpointing = Checkpointing()
