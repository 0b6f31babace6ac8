"""Text data for LM pretraining: corpus -> train/val text -> tokenizer -> token ids -> windows.

Batches are a pure function of (seed, step) so a run is reproducible and resumable without any
data-loader state; validation uses fixed, non-overlapping windows so val metrics are comparable
across steps and runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from param_decomp.config.pretrain_schema import TOKENIZER_VOCAB, SentencePieceSpec, TextData
from param_decomp.data.corpora import load_documents, read_text_file, split_documents
from param_decomp.data.tokenizers import (
    TOKENIZER_CACHE,
    ByteTokenizer,
    DataError,
    SentencePieceSettings,
    SentencePieceTokenizer,
    Tokenizer,
    train_sentencepiece,
)


def _named_tokenizer(tokenizer: str) -> Tokenizer:
    if tokenizer != "byte":
        raise ValueError(f"unknown tokenizer {tokenizer!r}; available: {list(TOKENIZER_VOCAB)}")
    return ByteTokenizer()


def encode(text: str, tokenizer: str = "byte") -> Int[np.ndarray, " n"]:
    """Token ids of `text`; the byte tokenizer maps each UTF-8 byte to its value (vocab 256)."""
    return _named_tokenizer(tokenizer).encode(text)


def decode(tokens: Int[np.ndarray, " n"], tokenizer: str = "byte") -> str:
    """Inverse of `encode` (invalid UTF-8 sequences become U+FFFD)."""
    return _named_tokenizer(tokenizer).decode(tokens)


def bytes_per_token(tokenizer: str = "byte") -> Int[Array, " vocab"]:
    """UTF-8 byte length of each token id, for bytes-weighted CE and bits per byte."""
    return jnp.asarray(_named_tokenizer(tokenizer).bytes_per_token())


def load_tokens(path: str | Path, tokenizer: str = "byte") -> Int[np.ndarray, " n"]:
    """The whole corpus file, tokenized."""
    return encode(read_text_file(path), tokenizer)


@dataclass(frozen=True)
class CorpusSplits:
    """A corpus cut into train and val text (by document, or at a line boundary for one
    document), then tokenized by the tokenizer built on the train text."""

    train: Int[np.ndarray, " n_train"]
    val: Int[np.ndarray, " n_val"]
    tokenizer: Tokenizer

    def bytes_per_token(self) -> Int[Array, " vocab"]:
        return jnp.asarray(self.tokenizer.bytes_per_token())


def build_tokenizer(
    spec: str | SentencePieceSpec, train_text: str, cache_dir: Path = TOKENIZER_CACHE
) -> Tokenizer:
    """The configured tokenizer; a trained sentencepiece model learns from `train_text` only."""
    if isinstance(spec, str):
        return _named_tokenizer(spec)
    if spec.model is not None:
        return SentencePieceTokenizer.from_file(spec.model)
    settings = SentencePieceSettings(spec.vocab_size, spec.model_type, spec.byte_fallback)
    return train_sentencepiece(train_text, settings, cache_dir)[0]


def corpus_splits(data: TextData, seq_len: int, cache_dir: Path = TOKENIZER_CACHE) -> CorpusSplits:
    """Read, split (by document, or by text for one document), build the tokenizer on the
    train text, tokenize both parts."""
    train_text, val_text = split_documents(load_documents(data.corpus), data.val_fraction)
    tokenizer = build_tokenizer(data.tokenizer, train_text, cache_dir)
    train, val = tokenizer.encode(train_text), tokenizer.encode(val_text)
    for name, part in (("train", train), ("val", val)):
        if len(part) < seq_len + 1:
            raise DataError(
                data.corpus,
                f"the {name} split has {len(part)} tokens, fewer than seq_len + 1 = "
                f"{seq_len + 1}; use a larger corpus, a shorter seq_len or another val_fraction",
            )
    return CorpusSplits(train, val, tokenizer)


def split_tokens(
    tokens: Int[np.ndarray, " n"], val_fraction: float, seq_len: int
) -> tuple[Int[np.ndarray, " n_train"], Int[np.ndarray, " n_val"]]:
    """Contiguous split, the last `val_fraction` held out, so no window straddles both sets."""
    n_val = int(len(tokens) * val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
    for name, part in (("train", train), ("val", val)):
        if len(part) < seq_len + 1:
            raise ValueError(
                f"{name} split has {len(part)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                "use a larger corpus, a shorter seq_len or another val_fraction"
            )
    return train, val


def sample_windows(
    tokens: Int[Array, " n"],
    seed: int | Int[Array, ""],
    step: int | Int[Array, ""],
    batch_size: int,
    seq_len: int,
) -> Int[Array, "batch seq_len_plus_1"]:
    """`batch_size` random windows of seq_len + 1 tokens; pure in (seed, step), jit-friendly.

    Inputs are window[:, :-1] and next-token targets window[:, 1:].
    """
    key = jax.random.fold_in(jax.random.key(seed), step)
    starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - seq_len)
    take = lambda start: jax.lax.dynamic_slice(tokens, (start,), (seq_len + 1,))
    return jax.vmap(take)(starts)


def val_windows(
    tokens: Int[np.ndarray, " n"], seq_len: int, max_windows: int
) -> Int[np.ndarray, "windows seq_len_plus_1"]:
    """Fixed windows of seq_len + 1 tokens with stride seq_len: each val token after the first
    is a target exactly once (up to `max_windows` windows)."""
    n = min((len(tokens) - 1) // seq_len, max_windows)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return tokens[idx]
