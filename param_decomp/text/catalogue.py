"""The corpus catalogue: the names a `data.corpus` key accepts besides a path, and the default.

The ground floor, so the config schema (which refuses an unknown name at load time and takes
its default from here) and `data/corpora.py` (which reads the corpora) share one list. The
shipped procedural text itself stays in `data/corpus/`, the package data of `data/`.
"""

from __future__ import annotations

from pathlib import Path

CORPUS_NAMES = ("generated", "shakespeare")
# The shipped procedural text (`generated`): the default corpus of a `data:` block.
DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus" / "corpus.txt"


def corpus_path_exists(corpus: str) -> bool:
    path = Path(corpus).expanduser()
    return corpus in CORPUS_NAMES or path.is_file() or path.is_dir()
