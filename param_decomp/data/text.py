"""Byte-level text helpers for tests and tools: the byte tokenizer by name.

Training data never goes through here: corpora are tokenized into on-disk token files
(`token_store`) and read by the grain pipeline (`pipeline`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from param_decomp.config.pretrain_schema import TOKENIZER_VOCAB
from param_decomp.data.tokenizers import ByteTokenizer, Tokenizer


def named_tokenizer(tokenizer: str) -> Tokenizer:
    if tokenizer != "byte":
        raise ValueError(f"unknown tokenizer {tokenizer!r}; available: {list(TOKENIZER_VOCAB)}")
    return ByteTokenizer()


def encode(text: str, tokenizer: str = "byte") -> Int[np.ndarray, " n"]:
    """Token ids of `text`; the byte tokenizer maps each UTF-8 byte to its value (vocab 256)."""
    return named_tokenizer(tokenizer).encode(text)


def decode(tokens: Int[np.ndarray, " n"], tokenizer: str = "byte") -> str:
    """Inverse of `encode` (invalid UTF-8 sequences become U+FFFD)."""
    return named_tokenizer(tokenizer).decode(tokens)


def bytes_per_token(tokenizer: str = "byte") -> Int[Array, " vocab"]:
    """UTF-8 byte length of each token id, for bytes-weighted CE and bits per byte."""
    return jnp.asarray(named_tokenizer(tokenizer).bytes_per_token())
