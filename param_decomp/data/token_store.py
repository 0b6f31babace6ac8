"""Tokenized corpora on disk: documents -> token ids -> one flat file per split, each document
followed by the end-of-document token (S12.4).

The files are built once per (corpus files, document mode, text field, val fraction,
tokenizer), streamed document by document (memory bounded by the largest document), written
under a temporary name and renamed into place, so a reader never sees half a cache and
concurrent builders (one per process) cannot corrupt it. Windows are read back with positional
reads, never a memory map, so a process's resident memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Int

from param_decomp.config.pretrain_schema import HFTokenizerSpec, SentencePieceSpec, TextData
from param_decomp.data.corpora import (
    Document,
    Split,
    SplitTally,
    corpus_fingerprint,
    iter_split,
    split_guard,
)
from param_decomp.text.hf_tokenizer import HFTokenizer
from param_decomp.text.tokenizers import (
    ByteTokenizer,
    DataError,
    SentencePieceSettings,
    SentencePieceTokenizer,
    Tokenizer,
    train_sentencepiece,
)

CACHE_ROOT = Path("runs")
TOKEN_FORMAT = 1  # bump when the file layout or the split rule changes


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id (bytes: one byte per token)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size {vocab_size} does not fit 32 bits")


@dataclass(frozen=True)
class TokenFile:
    """One split's token ids, read by position."""

    path: Path
    dtype: np.dtype
    n_tokens: int

    def n_windows(self, seq_len: int) -> int:
        """Windows of seq_len + 1 tokens at stride seq_len (inputs and next-token targets):
        each token after the first is a target exactly once."""
        return max(0, (self.n_tokens - 1) // seq_len)

    def windows(self, index: Int[np.ndarray, " k"], seq_len: int) -> Int[np.ndarray, "k s"]:
        """Window i is tokens [i * seq_len, i * seq_len + seq_len + 1), as int32."""
        width = seq_len + 1
        item = self.dtype.itemsize
        out = np.empty((len(index), width), np.int32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for row, i in enumerate(np.asarray(index, np.int64)):
                raw = os.pread(fd, width * item, int(i) * seq_len * item)
                out[row] = np.frombuffer(raw, self.dtype)
        finally:
            os.close(fd)
        return out


@dataclass(frozen=True)
class TokenStore:
    """The tokenized train and val splits of a corpus, and the tokenizer that made them."""

    directory: Path
    train: TokenFile
    val: TokenFile
    tokenizer: Tokenizer
    meta: dict

    def split(self, name: Split) -> TokenFile:
        return self.train if name == "train" else self.val


def _split_pass(
    data: TextData, keywords: dict[str, str], consume: Callable[[Split, Document], None]
) -> dict[str, str] | None:
    """Stream the split once into `consume`; return the guard keywords if the hash rule left a
    split empty (then the caller streams again with them)."""
    tally = SplitTally()
    for split, doc in iter_split(
        data.corpus, data.val_fraction, data.documents, data.text_field, **keywords
    ):
        tally.add(split, doc.name)
        consume(split, doc)
    return None if keywords else split_guard(tally, data.corpus)


def _streamed(data: TextData, make: Callable[[], Callable[[Split, Document], None]]) -> dict:
    """Run a pass (twice when the split guard moves a document); the keywords used."""
    keywords: dict[str, str] = {}
    guard = _split_pass(data, keywords, make())
    if guard is not None:
        keywords = guard
        _split_pass(data, keywords, make())
    return keywords


def build_tokenizer(data: TextData, cache_root: Path = CACHE_ROOT) -> Tokenizer:
    """The configured tokenizer (bytes, a sentencepiece model or a tokenizer.json); a trained
    sentencepiece model learns from the train split only (its documents joined by blank
    lines, in corpus order), cached by a hash of that text and the settings."""
    spec = data.tokenizer
    if isinstance(spec, HFTokenizerSpec):
        return HFTokenizer.from_path(spec.path)
    if not isinstance(spec, SentencePieceSpec):
        return ByteTokenizer()
    if spec.model is not None:
        return SentencePieceTokenizer.from_file(spec.model)
    parts: list[str] = []

    def collect() -> Callable[[Split, Document], None]:
        parts.clear()
        return lambda split, doc: parts.append(doc.text.strip("\n")) if split == "train" else None

    _streamed(data, collect)
    settings = SentencePieceSettings(spec.vocab_size, spec.model_type, spec.byte_fallback)
    text = "\n\n".join(parts) + "\n"
    return train_sentencepiece(text, settings, Path(cache_root) / "tokenizers")[0]


def _tokenizer_id(tokenizer: Tokenizer) -> str:
    if isinstance(tokenizer, SentencePieceTokenizer):
        return f"sentencepiece:{tokenizer.sha256()}"
    if isinstance(tokenizer, HFTokenizer):
        return f"hf:{tokenizer.sha256()}"
    return "byte"


def _cache_key(data: TextData, tokenizer: Tokenizer) -> dict:
    return {
        "format": TOKEN_FORMAT,
        "corpus": data.corpus,
        "files": corpus_fingerprint(data.corpus),
        "documents": data.documents,
        "text_field": data.text_field,
        "val_fraction": data.val_fraction,
        "tokenizer": _tokenizer_id(tokenizer),
    }


class _SplitWriter:
    """Appends each document's ids and the end-of-document id to its split's file."""

    def __init__(self, directory: Path, tokenizer: Tokenizer, dtype: np.dtype):
        self.tokenizer, self.dtype = tokenizer, dtype
        self.eod = np.asarray([tokenizer.eod_id], dtype)
        self.files = {s: (directory / f"{s}.bin").open("wb") for s in ("train", "val")}
        self.stats = {s: {"tokens": 0, "documents": 0, "bytes": 0} for s in ("train", "val")}

    def __call__(self, split: Split, doc: Document) -> None:
        ids = self.tokenizer.encode(doc.text).astype(self.dtype)
        self.files[split].write(ids.tobytes())
        self.files[split].write(self.eod.tobytes())
        stats = self.stats[split]
        stats["tokens"] += len(ids) + 1
        stats["documents"] += 1
        stats["bytes"] += len(doc.text.encode("utf-8"))

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _write_store(data: TextData, tokenizer: Tokenizer, key: dict, final: Path) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    tmp = final.with_name(f"{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writers: list[_SplitWriter] = []

    def make() -> _SplitWriter:
        for w in writers:
            w.close()
        writers.append(_SplitWriter(tmp, tokenizer, dtype))
        return writers[-1]

    try:
        keywords = _streamed(data, make)
        writers[-1].close()
        meta = {
            **key,
            "dtype": dtype.name,
            "eod_id": int(tokenizer.eod_id),
            "vocab_size": int(tokenizer.vocab_size),
            "split_guard": keywords,
            "splits": writers[-1].stats,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / "meta.json").is_file():
                raise
    finally:
        for w in writers:
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_tokens(data: TextData, seq_len: int, cache_root: Path = CACHE_ROOT) -> TokenStore:
    """The tokenized splits of `data`, built on first use and cached under
    `<cache_root>/tokens/<hash>/`. Each split must hold at least one window."""
    tokenizer = build_tokenizer(data, cache_root)
    key = _cache_key(data, tokenizer)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    directory = Path(cache_root) / "tokens" / digest
    if not (directory / "meta.json").is_file():
        directory.parent.mkdir(parents=True, exist_ok=True)
        _write_store(data, tokenizer, key, directory)
    meta = json.loads((directory / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    files = {
        s: TokenFile(directory / f"{s}.bin", dtype, meta["splits"][s]["tokens"])
        for s in ("train", "val")
    }
    for name, part in files.items():
        if part.n_windows(seq_len) < 1:
            raise DataError(
                data.corpus,
                f"the {name} split has {part.n_tokens} tokens, fewer than seq_len + 1 = "
                f"{seq_len + 1}; use a larger corpus, a shorter seq_len or another val_fraction",
            )
    return TokenStore(directory, files["train"], files["val"], tokenizer, meta)
