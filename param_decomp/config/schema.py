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
    Discriminator,
    Field,
    PositiveFloat,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

# The ground floor (text/) holds the corpus catalogue: a `data:` block's default corpus.
from param_decomp.text.catalogue import DEFAULT_CORPUS

NonNegFloat = Annotated[float, Field(ge=0.0)]
# The forward passes' dtype (S15): fp32 masters and reductions either way.
ComputeDtype = Literal["float32", "bfloat16"]
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


class SentencePieceSpec(StrictModel):
    """A sentencepiece tokenizer: trained in-process on the train text (`vocab_size`, with
    `model_type` and `byte_fallback`), or an existing `.model` file (`model`)."""

    kind: Literal["sentencepiece"]
    vocab_size: PositiveInt | None = None
    model_type: Literal["bpe", "unigram"] = "bpe"
    byte_fallback: bool = True
    model: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _trained_or_file(self) -> SentencePieceSpec:
        if (self.vocab_size is None) == (self.model is None):
            raise ValueError(
                "give either vocab_size (train a model on the corpus) or model (a .model file)"
            )
        if self.model is not None and {"model_type", "byte_fallback"} & self.model_fields_set:
            raise ValueError("model_type and byte_fallback only apply to a trained model")
        return self


class HFTokenizerSpec(StrictModel):
    """A Hugging Face `tokenizer.json` (BPE or Unigram), read with the `tokenizers` library:
    `path` is the folder holding it (its tokenizer_config.json names the end-of-document
    eos_token) or the file itself."""

    kind: Literal["hf"]
    path: str = Field(min_length=1, description="folder holding tokenizer.json, or the file")


def _tokenizer_kind(value: Any) -> str:
    """`data.tokenizer:` is the name `byte` or a block chosen by its `kind` (a block with no
    known kind is read as sentencepiece's, whose error then names the `kind` it expects)."""
    if isinstance(value, SentencePieceSpec | HFTokenizerSpec):
        return value.kind
    if isinstance(value, dict):
        kind = value.get("kind")
        return (
            kind if isinstance(kind, str) and kind in ("sentencepiece", "hf") else "sentencepiece"
        )
    return "byte"


TokenizerChoice = Annotated[
    Annotated[Literal["byte"], Tag("byte")]
    | Annotated[SentencePieceSpec, Tag("sentencepiece")]
    | Annotated[HFTokenizerSpec, Tag("hf")],
    Discriminator(_tokenizer_kind),
]


class TextData(StrictModel):
    """Where the text comes from and how it is cut into training windows."""

    corpus: str = Field(default=str(DEFAULT_CORPUS), min_length=1)
    tokenizer: TokenizerChoice = Field(
        default="byte", description="byte, or a {kind: sentencepiece | hf, ...} block"
    )
    seq_len: PositiveInt | None = Field(
        default=None,
        description="training context; omitted means model.seq_len (an hf target: HF_WINDOW)",
    )
    documents: Literal["file", "blank_lines"] = Field(
        default="file",
        description="a plain-text file is one document, or one per blank-line-separated block",
    )
    text_field: str = Field(
        default="text", min_length=1, description="the JSONL field / parquet column of the text"
    )
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    max_val_windows: PositiveInt = 512
    prefetch: PositiveInt = Field(
        default=4, description="training batches read ahead (the data pipeline's memory bound)"
    )


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
    moment_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="storage dtype of both AdamW moments (S10.5); bfloat16 halves the "
        "optimizer state, the update itself is computed in float32",
    )


class DecompositionOptimizer(Optimizer):
    """A decomposition's optimizer: also the reference's LM recipe's split clipping (S10.6),
    the components' gradient clipped apart from the CI function's, so a large CI-function
    gradient cannot shrink the components' step (or the other way round)."""

    grad_clip_norm_components: PositiveFloat | None = Field(
        default=None, description="global-norm clip of every V and U gradient together (S10.6)"
    )
    grad_clip_norm_ci_function: PositiveFloat | None = Field(
        default=None, description="global-norm clip of the CI function's gradient (S10.6)"
    )

    @model_validator(mode="after")
    def _one_kind_of_clipping(self) -> DecompositionOptimizer:
        split = self.grad_clip_norm_components or self.grad_clip_norm_ci_function
        if self.grad_clip_norm is not None and split is not None:
            raise ValueError(
                "grad_clip_norm clips every gradient together; grad_clip_norm_components / "
                "grad_clip_norm_ci_function clip the two groups apart: set one kind, not both"
            )
        return self


# ----------------------------------------------------------------------------- logging


class WandbLogging(StrictModel):
    """Also send a run's metrics and figures to Weights & Biases (metrics.jsonl is always
    written); only process 0 logs. Needs the `wandb` extra."""

    project: str = Field(min_length=1)
    mode: Literal["online", "offline", "disabled"] = "online"
    entity: str | None = Field(default=None, min_length=1)
    dir: str | None = Field(
        default=None,
        min_length=1,
        description="where wandb writes its files; omitted: $WANDB_DIR, else the run folder",
    )
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = []


class Logging(StrictModel):
    """Where metrics go besides metrics.jsonl; an absent block means nowhere else."""

    wandb: WandbLogging | None = None


# ----------------------------------------------------------------------------- targets


class TMSModel(StrictModel):
    """Toy model of superposition: x -> W1 -> [hidden layers] -> W2 (+bias) -> ReLU."""

    type: Literal["tms"]
    n_features: PositiveInt
    n_hidden: PositiveInt
    n_hidden_layers: Annotated[int, Field(ge=0)] = 0
    tied_weights: bool = True
    init_bias_to_zero: bool = False
    # the hidden layers are fixed identities, never trained (still sites): the SPD paper's
    # "TMS with identity" (S18.1)
    fixed_identity_hidden_layers: bool = False


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


class LinearRopeScaling(StrictModel):
    """RoPE position interpolation: every frequency divided by `factor`."""

    type: Literal["linear"]
    factor: PositiveFloat


class Llama3RopeScaling(StrictModel):
    """Llama 3.1's RoPE frequency scaling (S17.3): long wavelengths divided by `factor`, short
    ones kept, the band between blended smoothly."""

    type: Literal["llama3"]
    factor: PositiveFloat
    low_freq_factor: PositiveFloat = 1.0
    high_freq_factor: PositiveFloat = 4.0
    original_max_position_embeddings: PositiveInt = 8192

    @model_validator(mode="after")
    def _band_ordered(self) -> Llama3RopeScaling:
        if not self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                f"low_freq_factor ({self.low_freq_factor}) must be below high_freq_factor "
                f"({self.high_freq_factor})"
            )
        return self


RopeScaling = Annotated[LinearRopeScaling | Llama3RopeScaling, Field(discriminator="type")]


class LlamaModel(_LMFields):
    """Llama-style causal LM: RMSNorm, RoPE attention, SwiGLU MLP.

    The optional attention fields describe Hugging Face Llama / Qwen3 checkpoints (S17); their
    defaults are the project's own small Llama (one K/V head per query head, head size
    d_model / n_heads, RoPE base 10000 unscaled, RMSNorm eps 1e-6, no q/k norm)."""

    type: Literal["llama"]
    tied_head: bool = Field(default=False, description="logits from the embedding transposed")
    n_kv_heads: PositiveInt | None = Field(
        default=None, description="K/V heads (grouped-query attention); omitted means n_heads"
    )
    head_dim: PositiveInt | None = Field(
        default=None, description="size of one head; omitted means d_model / n_heads"
    )
    rope_theta: PositiveFloat = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: PositiveFloat = 1e-6
    qk_norm: bool = Field(
        default=False, description="RMSNorm of every query and key head before RoPE (Qwen3)"
    )

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @model_validator(mode="after")
    def _heads_divide(self) -> LlamaModel:
        if self.head_dim is None and (self.d_model % self.n_heads or self.head_size % 2):
            raise ValueError(
                f"d_model ({self.d_model}) must be n_heads ({self.n_heads}) times an even head size"
            )
        if self.head_size % 2:
            raise ValueError(f"head_dim ({self.head_size}) must be even (RoPE rotates pairs)")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})"
            )
        return self


class GPT2Model(_LMFields):
    """Small GPT-2-style causal LM: LayerNorm, learned positions, GELU MLP, biases."""

    type: Literal["gpt2"]
    tied_head: bool = Field(default=True, description="logits from the embedding transposed")
    layer_norm_eps: PositiveFloat = 1e-5

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
    logging: Logging = Logging()


# ----------------------------------------------------------------------------- decomposition


class CIFunction(StrictModel):
    """Causal-importance function (SPEC S5): which inputs it reads and its sizes.

    `hidden` sizes the MLP kinds; `d_model`, `n_layers`, `n_heads`, `d_mlp` and `rope_base`
    size `global_transformer` (S5.5), a bidirectional transformer over the sequence of an LM."""

    type: Literal["per_component_mlp", "per_site_mlp", "global_mlp", "global_transformer"] = (
        "per_component_mlp"
    )
    hidden: list[PositiveInt] = [16]
    d_model: PositiveInt = 64
    n_layers: PositiveInt = 2
    n_heads: PositiveInt = 4
    d_mlp: PositiveInt | None = Field(default=None, description="4 * d_model when omitted")
    rope_base: PositiveFloat = 10000.0

    @model_validator(mode="after")
    def _heads_divide(self) -> CIFunction:
        if self.type == "global_transformer" and (
            self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2
        ):
            raise ValueError(
                f"d_model ({self.d_model}) must be n_heads ({self.n_heads}) times an even "
                "head size (rotary embedding rotates pairs)"
            )
        return self


class SiteGroup(StrictModel):
    """Sites chosen by a dotted pattern (`*` matches one whole or partial name segment, e.g.
    `layers.*.mlp.*`), each with its own number of components C (S1.4)."""

    pattern: str = Field(min_length=1)
    C: PositiveInt | None = Field(
        default=None, description="components per matched site; decomposition.C when omitted"
    )


class Decomposition(StrictModel):
    """Which target weights are decomposed, into how many components, with which CI function.

    `sites` entries are exact site names or patterns (plain strings use `C`), or
    `{pattern, C}` groups with their own C. They resolve against the target's site list, in
    the target's own order (S1.4), so the order a config lists them in never matters."""

    C: PositiveInt | None = Field(default=None, description="C of entries without their own")
    sites: list[str | SiteGroup] = Field(min_length=1)
    tied_sites: dict[str, str] = {}
    ci_function: CIFunction = CIFunction()
    squashing: Literal["leaky_hard"] = "leaky_hard"
    leaky_alpha: PositiveFloat = 0.01
    init_scale: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _every_entry_has_a_C(self) -> Decomposition:
        for entry in self.sites:
            pattern = entry if isinstance(entry, str) else entry.pattern
            if self.C is None and (isinstance(entry, str) or entry.C is None):
                raise ValueError(
                    f"sites entry {pattern!r} has no C: set decomposition.C or write it as "
                    f"{{pattern: {pattern!r}, C: <components>}}"
                )
        for tied, source in self.tied_sites.items():
            if source in self.tied_sites:
                raise ValueError(f"tied_sites: source {source} of {tied} is itself tied")
        return self

    def site_entries(self) -> list[tuple[str, int]]:
        """(pattern, C) of every `sites` entry, in config order."""
        out = []
        for entry in self.sites:
            if isinstance(entry, str):
                out.append((entry, int(self.C)))  # type: ignore[arg-type]  # checked above
            else:
                out.append((entry.pattern, int(entry.C if entry.C is not None else self.C)))  # type: ignore[arg-type]
        return out

    def all_C(self) -> list[int]:
        """Every C a site of this decomposition may have (for the S13.1 tensor check)."""
        return sorted({c for _, c in self.site_entries()})


class FaithfulnessWarmup(StrictModel):
    """Steps on the faithfulness loss alone (V, U only) before the main loop."""

    steps: Annotated[int, Field(ge=0)] = 0
    lr: PositiveFloat = 0.01
    weight_decay: NonNegFloat = 0.0


class DecomposeTraining(StrictModel):
    steps: PositiveInt
    batch_size: PositiveInt
    optimizer: DecompositionOptimizer
    faithfulness_warmup: FaithfulnessWarmup = FaithfulnessWarmup()
    log_every: PositiveInt = 100
    micro_batches: PositiveInt = Field(
        default=1,
        description="gradient accumulation over this many micro-batches of train.batch_size, one "
        "update (S10.4): only one micro-batch's activations are live at a time",
    )
    compute_dtype: ComputeDtype = Field(
        default="float32",
        description="target and masked forwards' dtype (S15.6); bfloat16 keeps fp32 masters, "
        "CI function, masks and losses",
    )
    remat: list[Literal["masked_forwards", "faithfulness"]] = Field(
        default_factory=list,
        description="parts of the step recomputed in the backward instead of kept (S15.9): "
        "masked_forwards (their activations), faithfulness (each site's V U)",
    )


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
    pgd_steps: Annotated[int, Field(ge=0)] = Field(
        default=20, description="sign-ascent steps of the fast tier's pgd mask (S14.10)"
    )
    pgd_step_size: PositiveFloat = Field(
        default=0.1, description="step of the pgd mask's sources, clamped to [0, 1] (S14.10)"
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
    devices: PositiveInt | None = Field(
        default=None,
        description="use only the first N visible devices (default: all); one process only. "
        "A small job on a many-device host, or a test whose subject is not the mesh",
    )
    shard_target_weights: bool = False
    shard_optimizer_state: bool = Field(
        default=False,
        description="split the AdamW moments over the batch axes (data, fsdp) too, "
        "ZeRO-style (S13.6)",
    )

    @field_validator("data")
    @classmethod
    def _data_size(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"must be a positive size or -1 (the remaining devices), got {value}")
        return value


class Checkpointing(StrictModel):
    every: Annotated[int, Field(ge=0)] = 0
    keep: PositiveInt = 2


class HFTarget(StrictModel):
    """A local Hugging Face-format model folder (config.json + *.safetensors) as the target
    (S17): Llama, Qwen3 or GPT-2, its weights held in `dtype`."""

    hf: str = Field(min_length=1, description="the model folder; nothing is downloaded")
    dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="dtype the weights are held in (F32, BF16, F16 files)"
    )


def _target_kind(value: Any) -> str:
    """`target:` is a target YAML path (a string) or an `{hf: ...}` block."""
    return "hf_checkpoint" if isinstance(value, dict | HFTarget) else "target_file"


def _data_kind(value: Any) -> str:
    """`data:` holds sparse features (a toy target) or text (an hf target); the two blocks share
    no key, so the keys given decide."""
    if isinstance(value, SparseFeatureData):
        return "sparse_features"
    if isinstance(value, dict) and set(value) & set(SparseFeatureData.model_fields):
        return "sparse_features"
    return "text"


TargetSource = Annotated[
    Annotated[str, Tag("target_file"), Field(min_length=1)]
    | Annotated[HFTarget, Tag("hf_checkpoint")],
    Discriminator(_target_kind),
    Field(description="path of the target's YAML config, or {hf: model folder}"),
]
DecomposeData = Annotated[
    Annotated[SparseFeatureData, Tag("sparse_features")] | Annotated[TextData, Tag("text")],
    Discriminator(_data_kind),
]


class DecomposeConfig(StrictModel):
    """`param-decomp decompose` config."""

    run_name: RunName
    seed: int = 0
    target: TargetSource
    decomposition: Decomposition
    losses: list[Any] = Field(min_length=1)  # validated against the loss registry at load
    train: DecomposeTraining
    data: DecomposeData | None = Field(
        default=None,
        description="sparse features overriding a toy target's, or the text an hf target reads",
    )
    eval: Eval = Eval()
    mesh: Mesh = Mesh()
    checkpointing: Checkpointing = Checkpointing()
    logging: Logging = Logging()

    @model_validator(mode="after")
    def _data_fits_target(self) -> DecomposeConfig:
        hf = isinstance(self.target, HFTarget)
        if hf and isinstance(self.data, SparseFeatureData):
            raise ValueError(
                "data: an hf target reads text: give a text block (corpus, tokenizer, seq_len, "
                "...), not sparse features"
            )
        if not hf and isinstance(self.data, TextData):
            raise ValueError(
                "data: a text block only applies to an `hf:` target; a target file brings its "
                "own data (a toy target's sparse features may be overridden here)"
            )
        return self
