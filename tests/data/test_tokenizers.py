"""Tokenizers: exact bytes tables, deterministic cached sentencepiece training, clear errors,
and pretraining / decomposition sources on a sentencepiece tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from param_decomp.cli import main
from param_decomp.config.errors import ConfigError
from param_decomp.config.pretrain_schema import load_pretrain_config
from param_decomp.data.corpora import DEFAULT_CORPUS, read_text_file, split_text
from param_decomp.data.token_store import prepare_tokens
from param_decomp.jobs.pretrain import pretrain
from param_decomp.text.tokenizers import (
    ByteTokenizer,
    DataError,
    SentencePieceSettings,
    SentencePieceTokenizer,
    train_sentencepiece,
)

TRICKY = [
    "naïve café, Ærøskøbing and Łódź",
    "emoji 🙂🚀 and a zero-width joiner 👩\u200d🔬",
    "runs   of    spaces\tand\ttabs  ",
    "\n\nblank lines\n\n\nand a trailing newline\n",
    "東京 and Ελληνικά and עברית",
    "   leading spaces",
]
# vocabularies the corpus sample can fill: >= 256 byte pieces + its characters, and its few
# distinct words cap unigram below ~400
SETTINGS = [SentencePieceSettings(384, "bpe"), SentencePieceSettings(352, "unigram")]


@pytest.fixture(scope="module")
def corpus_text() -> str:
    text = Path(DEFAULT_CORPUS).read_text(encoding="utf-8")
    return text[:60_000] + "\n" + "\n".join(TRICKY[:2])  # some non-ASCII seen in training


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.model_type)
def test_bytes_table_sums_to_utf8_length(
    corpus_text: str, settings: SentencePieceSettings, tmp_path: Path
) -> None:
    tok, _ = train_sentencepiece(corpus_text, settings, tmp_path)
    table = tok.bytes_per_token()
    assert table.shape == (settings.vocab_size,)
    for text in [*TRICKY, "\n".join(TRICKY), corpus_text[:3000]]:
        ids = tok.encode(text)
        assert int(table[ids].sum()) == len(text.encode("utf-8")), text
        assert tok.decode(ids) == text
    # control and unknown pieces count zero, byte-fallback pieces one
    sp = tok._sp
    assert table[sp.unk_id()] == 0 and table[sp.eos_id()] == 0
    byte_ids = [i for i in range(tok.vocab_size) if sp.IsByte(i)]
    assert len(byte_ids) == 256 and set(table[byte_ids]) == {1}


def test_byte_tokenizer_table_is_one_byte_per_token_and_zero_for_eod() -> None:
    tok = ByteTokenizer()
    text = "".join(TRICKY)
    assert int(tok.bytes_per_token()[tok.encode(text)].sum()) == len(text.encode("utf-8"))
    assert tok.bytes_per_token()[tok.eod_id] == 0 and tok.eod_id not in tok.encode(text)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.model_type)
def test_training_is_deterministic_and_cached(
    corpus_text: str, settings: SentencePieceSettings, tmp_path: Path
) -> None:
    a, cached_a = train_sentencepiece(corpus_text, settings, tmp_path / "a")
    b, cached_b = train_sentencepiece(corpus_text, settings, tmp_path / "b")
    assert not cached_a and not cached_b
    assert a.model_proto == b.model_proto  # byte-identical models from the same inputs
    again, cached = train_sentencepiece(corpus_text, settings, tmp_path / "a")
    assert cached and again.model_proto == a.model_proto
    assert len(list((tmp_path / "a").iterdir())) == 1
    # other settings or other text: another cache entry
    _, cached_other = train_sentencepiece(corpus_text + "\nmore", settings, tmp_path / "a")
    assert not cached_other


def test_split_is_by_line_and_keeps_every_byte() -> None:
    text = "".join(f"line {i} with some words\n" for i in range(1000))
    train, val = split_text(text, 0.1)
    assert train + val == text
    assert train.endswith("\n") and not val.startswith("\n")
    assert abs(len(val) / len(text) - 0.1) < 0.01


def _pretrain_raw(tokenizer: object, vocab: int, corpus: str | None = None) -> dict:
    data: dict = {"tokenizer": tokenizer, "max_val_windows": 16}
    if corpus is not None:
        data["corpus"] = corpus
    return {
        "run_name": "sp_test",
        "model": {
            "type": "llama",
            "vocab_size": vocab,
            "d_model": 32,
            "n_heads": 2,
            "d_mlp": 64,
            "n_layers": 1,
            "seq_len": 32,
        },
        "data": data,
        "train": {
            "steps": 40,
            "batch_size": 8,
            "optimizer": {"lr": 1e-2},
            "log_every": 20,
            "eval_every": 40,
        },
    }


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_pretrain_on_a_trained_sentencepiece_reports_bits_per_byte(tmp_path: Path) -> None:
    spec = {"kind": "sentencepiece", "vocab_size": 384, "model_type": "bpe"}
    cfg = load_pretrain_config(_write(tmp_path, _pretrain_raw(spec, 384)))
    pretrain(cfg, tmp_path, log=False)
    records = (tmp_path / "targets" / "sp_test" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(records[-1])
    assert math.isfinite(last["val/bits_per_byte"]) and last["val/bits_per_byte"] > 0
    assert last["val/loss"] < math.log(384)  # learned something in 40 steps
    # the tokenizer was trained once, on the train split, and cached under runs/tokenizers
    (model_file,) = (tmp_path / "tokenizers").iterdir()
    store = prepare_tokens(cfg.data, cfg.seq_len, tmp_path)
    assert store.tokenizer.model_proto == model_file.read_bytes()
    train_text, val_text = split_text(read_text_file(cfg.data.corpus), cfg.data.val_fraction)
    table = store.tokenizer.bytes_per_token()
    for part, text in ((store.train, train_text), (store.val, val_text)):
        tokens = np.fromfile(part.path, part.dtype)
        assert int(table[tokens].sum()) == len(text.encode("utf-8"))
        assert tokens[-1] == store.tokenizer.eod_id  # each document ends with the EOD token
        assert int(np.sum(tokens == store.tokenizer.eod_id)) == 1


def test_pretrain_from_a_model_file(tmp_path: Path, corpus_text: str) -> None:
    tok, _ = train_sentencepiece(corpus_text, SETTINGS[0], tmp_path / "cache")
    model = tmp_path / "my.model"
    model.write_bytes(tok.model_proto)
    spec = {"kind": "sentencepiece", "model": str(model)}
    cfg = load_pretrain_config(_write(tmp_path, _pretrain_raw(spec, 384)))
    store = prepare_tokens(cfg.data, cfg.seq_len, tmp_path / "cache_root")
    assert store.tokenizer.model_proto == tok.model_proto
    assert not (tmp_path / "cache_root" / "tokenizers").exists()  # nothing trained


def test_bad_tokenizer_and_corpus_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.model"
    bad.write_bytes(b"this is not a sentencepiece model")
    path = _write(tmp_path, _pretrain_raw({"kind": "sentencepiece", "model": str(bad)}, 384))
    with pytest.raises(ConfigError, match="data.tokenizer.model") as err:
        load_pretrain_config(path)
    assert "broken.model" in str(err.value)
    assert main(["pretrain", str(path), "--runs-dir", str(tmp_path)]) == 2

    path = _write(tmp_path, _pretrain_raw({"kind": "sentencepiece", "vocab_size": 384}, 256))
    with pytest.raises(ConfigError, match="model.vocab_size"):
        load_pretrain_config(path)
    both = {"kind": "sentencepiece", "vocab_size": 384, "model": str(bad)}
    with pytest.raises(ConfigError, match="either vocab_size"):
        load_pretrain_config(_write(tmp_path, _pretrain_raw(both, 384)))

    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(("hello world\n" * 200).encode() + "caf\xe9\n".encode("latin-1"))
    cfg = load_pretrain_config(_write(tmp_path, _pretrain_raw("byte", 256, str(corpus))))
    with pytest.raises(DataError, match=r"latin1.txt: not valid UTF-8 at byte 2403"):
        prepare_tokens(cfg.data, cfg.seq_len, tmp_path)
    path = _write(tmp_path, _pretrain_raw("byte", 256, str(corpus)))
    assert main(["pretrain", str(path), "--runs-dir", str(tmp_path)]) == 2


def test_unloadable_model_bytes_raise_tokenizer_error() -> None:
    with pytest.raises(DataError, match="not a sentencepiece model"):
        SentencePieceTokenizer(b"\x00\x01garbage", "x.model")
    assert np.all(ByteTokenizer().encode("abc") == [97, 98, 99])
