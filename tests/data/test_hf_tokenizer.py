"""`data.tokenizer: {kind: hf}` (S17.9): a tokenizer.json read through `tokenizers`, its exact bytes
table (byte-level BPE built here, sentencepiece-style files converted from the project's
sentencepiece models), the conversion's ids against sentencepiece's on tricky texts, and clean
errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_tokenizers import SETTINGS, TRICKY

from param_decomp.cli import main
from param_decomp.config.errors import ConfigError
from param_decomp.config.pretrain_schema import load_pretrain_config
from param_decomp.data.corpora import DEFAULT_CORPUS
from param_decomp.data.token_store import prepare_tokens
from param_decomp.data.tokenizer_convert import to_hf_tokenizer, write_tokenizer_files
from param_decomp.text.hf_tokenizer import HFTokenizer
from param_decomp.text.tokenizers import (
    ByteTokenizer,
    DataError,
    SentencePieceSettings,
    train_sentencepiece,
)

# beyond TRICKY: special and byte pieces spelled out (their characters are in the training
# text below), empty and blank input, a bare carriage return, long runs
MORE = [
    "</s> and <unk> and <0x41> spelled out, <html> and x/y",
    "",
    " ",
    "\r\nwindows line\r\n",
    "a" * 80,
    "mixed 123 4567 numbers and 東京東京東京",
]


@pytest.fixture(scope="module")
def corpus_text() -> str:
    text = Path(DEFAULT_CORPUS).read_text(encoding="utf-8")
    tags = "if a < b or c > d then x/y is 0x41 in <html> and </html>\n" * 3
    return text[:60_000] + "\n" + "\n".join(TRICKY[:2]) + "\n" + tags


def _texts(corpus_text: str) -> list[str]:
    return [*TRICKY, *MORE, "\n".join(TRICKY), corpus_text[-3000:], corpus_text[:20_000]]


def _byte_level_folder(folder: Path, corpus_text: str) -> Path:
    """A GPT-2-style byte-level BPE trained here on a little text, with its config file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus_text[:30_000], *TRICKY[:3]], trainer)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_byte_level_bpe_bytes_table_sums_to_utf8_length(tmp_path: Path, corpus_text: str) -> None:
    tok = HFTokenizer.from_path(_byte_level_folder(tmp_path / "bl", corpus_text))
    table = tok.bytes_per_token()
    assert table.shape == (tok.vocab_size,) and tok.vocab_size == 400
    assert tok.eod_id == 0 and table[tok.eod_id] == 0  # no tokenizer_config: the usual name
    for text in _texts(corpus_text):
        ids = tok.encode(text)
        assert int(table[ids].sum()) == len(text.encode("utf-8")), text
        assert tok.decode(ids) == text
    assert (table[1:] >= 1).all()  # every byte-level token is at least one byte
    # "<|endoftext|>" in the text is text, not the end-of-document id
    assert tok.eod_id not in tok.encode("a <|endoftext|> b")


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.model_type)
def test_sentencepiece_conversion_same_ids_and_bytes_table(
    tmp_path: Path, corpus_text: str, settings: SentencePieceSettings
) -> None:
    sp, _ = train_sentencepiece(corpus_text, settings, tmp_path / "cache")
    write_tokenizer_files(to_hf_tokenizer(sp), tmp_path, 64)
    tok = HFTokenizer.from_path(tmp_path)
    assert tok.vocab_size == sp.vocab_size and tok.eod_id == sp.eod_id
    table = tok.bytes_per_token()
    assert np.array_equal(table, sp.bytes_per_token())  # ▁ one byte, <0xAB> one, control zero
    for text in _texts(corpus_text):
        ids = tok.encode(text)
        assert ids.tolist() == sp.encode(text).tolist(), text
        assert int(table[ids].sum()) == len(text.encode("utf-8")), text
        assert tok.decode(ids) == sp.decode(ids)


def test_byte_tokenizer_conversion(tmp_path: Path) -> None:
    write_tokenizer_files(to_hf_tokenizer(ByteTokenizer()), tmp_path, 64)
    tok, ref = HFTokenizer.from_path(tmp_path), ByteTokenizer()
    assert tok.vocab_size == 256 and tok.eod_id == 0
    assert np.array_equal(tok.bytes_per_token(), ref.bytes_per_token())
    for text in [*TRICKY, *MORE]:
        assert tok.encode(text).tolist() == ref.encode(text).tolist(), text
        assert tok.decode(tok.encode(text)) == text


def _pretrain_raw(tokenizer: object, vocab: int) -> dict:
    return {
        "run_name": "hf_tok",
        "model": {"type": "llama", "vocab_size": vocab, "d_model": 16, "n_heads": 2, "d_mlp": 32},
        "data": {"tokenizer": tokenizer, "max_val_windows": 8},
        "train": {"steps": 1, "batch_size": 8, "optimizer": {"lr": 1e-3}},
    }


def test_pretrain_config_reads_the_folder_and_tokens_use_it(
    tmp_path: Path, corpus_text: str
) -> None:
    folder = _byte_level_folder(tmp_path / "bl", corpus_text)
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(_pretrain_raw({"kind": "hf", "path": str(folder)}, 400)))
    cfg = load_pretrain_config(path)
    store = prepare_tokens(cfg.data, 16, tmp_path / "runs")
    assert isinstance(store.tokenizer, HFTokenizer)
    assert store.meta["tokenizer"].startswith("hf:") and store.meta["eod_id"] == 0
    text = Path(DEFAULT_CORPUS).read_text(encoding="utf-8")
    tokens = np.concatenate([np.fromfile(p.path, p.dtype) for p in (store.train, store.val)])
    assert int(store.tokenizer.bytes_per_token()[tokens].sum()) == len(text.encode("utf-8"))

    path.write_text(yaml.safe_dump(_pretrain_raw({"kind": "hf", "path": str(folder)}, 512)))
    with pytest.raises(ConfigError, match="model.vocab_size: is 512, but tokenizer 'hf "):
        load_pretrain_config(path)


def test_bad_tokenizer_files_name_the_file(tmp_path: Path) -> None:
    cases = {
        "missing": (None, "tokenizer file not found"),
        "not_json": ("{ this is not json", "not JSON"),
        "wordpiece": (json.dumps({"model": {"type": "WordPiece", "vocab": {}}}), "WordPiece"),
        "no_model": (json.dumps({"version": "1.0"}), "no model block"),
        "broken": (json.dumps({"model": {"type": "BPE", "vocab": 3}}), "not a tokenizers file"),
    }
    for name, (content, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        if content is not None:
            (folder / "tokenizer.json").write_text(content)
        with pytest.raises(DataError, match=message) as err:
            HFTokenizer.from_path(folder)
        assert err.value.path == str(folder / "tokenizer.json")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_pretrain_raw({"kind": "hf", "path": str(folder)}, 256)))
        with pytest.raises(ConfigError, match="data.tokenizer.path") as cfg_err:
            load_pretrain_config(path)
        assert f"{name}/tokenizer.json" in str(cfg_err.value) and message in str(cfg_err.value)
    assert main(["pretrain", str(tmp_path / "missing.yaml"), "--runs-dir", str(tmp_path)]) == 2

    # a file without any end-of-document token: refused when the token store needs one
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE({"a": 0, "b": 1}, [])).save(str(tmp_path / "no_eos.json"))
    with pytest.raises(DataError, match="no end-of-document token") as err:
        _ = HFTokenizer.from_path(tmp_path / "no_eos.json").eod_id
    assert err.value.path.endswith("no_eos.json")
