"""Named corpora and the by-document train/val split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from param_decomp.config.errors import ConfigError
from param_decomp.config.pretrain_schema import DEFAULT_CORPUS, load_pretrain_config
from param_decomp.data.corpora import Document, load_documents, shakespeare_files, split_documents


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
    docs = [Document(f"doc{i}", f"text of document {i}\nline two {i}\n") for i in range(40)]
    train, val = split_documents(docs, 0.1)
    assert split_documents(list(reversed(docs)), 0.1) == (train, val)  # order-independent
    in_val = [d for d in docs if d.text.strip("\n") in val]
    in_train = [d for d in docs if d.text.strip("\n") in train]
    assert len(in_val) == 4 and len(in_train) == 36
    assert not {d.name for d in in_val} & {d.name for d in in_train}
    # adding a document never moves another one between the splits
    more = [*docs, Document("doc_new", "a new document\n")]
    train2, val2 = split_documents(more, 0.1)
    moved = [d for d in in_val if d.text.strip("\n") not in val2]
    assert len(moved) <= 1  # only the count of val documents can change by one


def test_one_document_splits_by_text() -> None:
    text = Path(DEFAULT_CORPUS).read_text(encoding="utf-8")
    train, val = split_documents([Document("generated", text)], 0.1)
    assert train + val == text


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


def _cfg(tmp_path: Path, corpus: Path) -> object:
    raw = {
        "run_name": "x",
        "model": {"type": "llama", "vocab_size": 256, "d_model": 8, "n_heads": 2, "d_mlp": 16},
        "data": {"corpus": str(corpus)},
        "train": {"steps": 1, "batch_size": 2, "optimizer": {"lr": 1e-3}},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_pretrain_config(path)


def test_user_corpora_directory_and_jsonl(tmp_path: Path) -> None:
    from param_decomp.data.text import corpus_splits

    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    for i in range(9):
        (d / f"doc{i}.txt").write_text(f"plain document {i}\n" * 20)
    lines = [json.dumps({"text": f"json document {i} " * 30, "id": i}) for i in range(11)]
    (d / "sub" / "more.jsonl").write_text("\n".join(lines) + "\n")
    docs = load_documents(str(d))
    assert len(docs) == 20 and docs[0].name == "doc0.txt" and docs[-1].name == "more.jsonl:11"
    cfg = _cfg(tmp_path, d)
    splits = corpus_splits(cfg.data, cfg.seq_len, tmp_path / "tok")
    assert len(splits.train) > len(splits.val) > 0


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
        ("tiny.txt", b"too short\n", "fewer than seq_len"),
    ],
)
def test_bad_corpora_name_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    from param_decomp.cli import main
    from param_decomp.data.text import corpus_splits
    from param_decomp.data.tokenizers import DataError

    corpus = tmp_path / name
    corpus.write_bytes(content)
    cfg = _cfg(tmp_path, corpus)
    with pytest.raises(DataError, match=message) as err:
        corpus_splits(cfg.data, cfg.seq_len, tmp_path / "tok")
    assert name in str(err.value)
    assert main(["pretrain", str(tmp_path / "p.yaml"), "--runs-dir", str(tmp_path)]) == 2
