"""Tokenizers for LM pretraining and decomposition: bytes, or a sentencepiece model.

A sentencepiece tokenizer is either trained in-process on the TRAIN text (cached under
`runs/tokenizers/` by a hash of the text and the settings, so a second request loads it) or
read from an existing `.model` file. Every tokenizer carries its exact bytes-per-token table,
which bits per byte and bytes-weighted CE divide by: `▁` counts one byte (it stands for a
space), a byte-fallback piece `<0xAB>` one byte, control and unknown pieces zero, every other
piece the UTF-8 length of its text.

The trained models keep the text byte for byte (identity normalisation, no dummy prefix, no
whitespace folding), so the table summed over a text's tokens is the text's UTF-8 length. A
model file trained with other settings gets the same table; its sum then differs from the
UTF-8 length by what its normaliser changed (e.g. one `▁` per document with a dummy prefix).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from jaxtyping import Int

TOKENIZER_CACHE = Path("runs") / "tokenizers"


class Tokenizer(Protocol):
    vocab_size: int

    @property
    def eod_id(self) -> int:
        """The end-of-document token that separates packed documents (zero bytes)."""
        ...

    def encode(self, text: str) -> Int[np.ndarray, " n"]: ...

    def decode(self, ids: Int[np.ndarray, " n"]) -> str: ...

    def bytes_per_token(self) -> Int[np.ndarray, " vocab"]: ...


class ByteTokenizer:
    """Each UTF-8 byte is a token (vocab 256). Id 0 (NUL, which no text corpus contains: the
    readers refuse it) is the end-of-document token and counts zero bytes; every other token
    is one byte."""

    vocab_size = 256
    eod_id = 0

    def encode(self, text: str) -> Int[np.ndarray, " n"]:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Int[np.ndarray, " n"]) -> str:
        return np.asarray(ids, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")

    def bytes_per_token(self) -> Int[np.ndarray, " vocab"]:
        table = np.ones((self.vocab_size,), np.int32)
        table[self.eod_id] = 0
        return table


# Vocabulary size of the fixed (named) tokenizers; a sentencepiece tokenizer states its own.
TOKENIZER_VOCAB = {"byte": ByteTokenizer.vocab_size}


class DataError(ValueError):
    """A corpus or tokenizer that cannot be read, built or loaded; `path` names the file at
    fault (the CLI prints it and exits 2, no traceback)."""

    def __init__(self, path: str | Path, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = str(path), message


class SentencePieceTokenizer:
    """A loaded sentencepiece model (its serialized proto is kept, for hashing and saving)."""

    def __init__(self, model_proto: bytes, source: str | Path = "<in memory>"):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.source = str(source)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as err:
            raise DataError(source, f"not a sentencepiece model ({err})") from None
        self.vocab_size = int(self._sp.GetPieceSize())

    @classmethod
    def from_file(cls, path: str | Path) -> SentencePieceTokenizer:
        """The model in `path`, parsed once per process: the config check (its vocabulary)
        and the token store (its ids) share one load while the file is unchanged."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(path, "sentencepiece model file not found")
        stat = path.stat()
        return _load_model_file(path.resolve(), stat.st_mtime_ns, stat.st_size)

    @property
    def eod_id(self) -> int:
        """The model's end-of-sentence piece (a control piece: zero bytes)."""
        eos = int(self._sp.eos_id())
        if eos < 0:
            raise DataError(
                self.source,
                "the model has no end-of-sentence piece (eos_id -1); packing documents needs "
                "one as the end-of-document token: train it with eos_id >= 0",
            )
        return eos

    def sha256(self) -> str:
        return hashlib.sha256(self.model_proto).hexdigest()

    def encode(self, text: str) -> Int[np.ndarray, " n"]:
        return np.asarray(self._sp.EncodeAsIds(text), dtype=np.int32)

    def decode(self, ids: Int[np.ndarray, " n"]) -> str:
        return self._sp.DecodeIds([int(i) for i in np.asarray(ids)])

    def bytes_per_token(self) -> Int[np.ndarray, " vocab"]:
        table = np.zeros((self.vocab_size,), np.int32)
        for i in range(self.vocab_size):
            if self._sp.IsControl(i) or self._sp.IsUnknown(i):
                continue
            if self._sp.IsByte(i):
                table[i] = 1
                continue
            piece = self._sp.IdToPiece(i)
            table[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        return table


@functools.lru_cache(maxsize=8)
def _load_model_file(path: Path, mtime_ns: int, size: int) -> SentencePieceTokenizer:
    """One parse per (file, version): mtime and size in the key, so an edited file reloads."""
    return SentencePieceTokenizer(path.read_bytes(), path)


@dataclass(frozen=True)
class SentencePieceSettings:
    """What a trained model depends on besides its text (all part of the cache key)."""

    vocab_size: int
    model_type: str = "bpe"
    byte_fallback: bool = True

    def trainer_kwargs(self) -> dict[str, object]:
        return {
            "vocab_size": self.vocab_size,
            "model_type": self.model_type,
            "byte_fallback": self.byte_fallback,
            # keep the text byte for byte, so the bytes table sums to its UTF-8 length
            "normalization_rule_name": "identity",
            "add_dummy_prefix": False,
            "remove_extra_whitespaces": False,
            "allow_whitespace_only_pieces": True,
            "split_by_whitespace": True,
            "character_coverage": 1.0,
            # deterministic: one thread, the sentences in file order, all of them
            "num_threads": 1,
            "shuffle_input_sentence": False,
            "input_sentence_size": 0,
            "max_sentence_length": 1 << 16,
            "hard_vocab_limit": True,
            "unk_id": 0,
            "bos_id": -1,
            "eos_id": 1,
            "pad_id": -1,
            "minloglevel": 2,
        }


def _cache_key(text: str, settings: SentencePieceSettings) -> str:
    digest = hashlib.sha256()
    digest.update(text.encode("utf-8"))
    digest.update(json.dumps(settings.trainer_kwargs(), sort_keys=True).encode())
    return digest.hexdigest()[:24]


def train_sentencepiece(
    text: str, settings: SentencePieceSettings, cache_dir: Path = TOKENIZER_CACHE
) -> tuple[SentencePieceTokenizer, bool]:
    """A model trained on `text` (one sentence per line), and whether it came from the cache."""
    import sentencepiece as spm

    path = (
        Path(cache_dir)
        / f"sp_{settings.model_type}{settings.vocab_size}_{_cache_key(text, settings)}.model"
    )
    if path.is_file():
        return SentencePieceTokenizer.from_file(path), True
    lines = [line for line in text.split("\n") if line]
    if not lines:
        raise DataError("<train text>", "no text to train a sentencepiece model on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, **settings.trainer_kwargs()
        )
    except RuntimeError as err:
        raise DataError("<train text>", f"sentencepiece training failed: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(path)  # atomic: a reader never sees half a model
    return SentencePieceTokenizer(model.getvalue(), path), False
