"""The project's tokenizers written as a Hugging Face `tokenizer.json` (`param-decomp export`).

A sentencepiece model becomes a `tokenizers` Unigram or BPE model with the same ids:

- Unigram: the pieces and their scores; control, unknown, byte and unused pieces get the
  score `NEVER`, so the lattice never picks them for text that spells them out ("</s>",
  "<0x41>"), as sentencepiece, which keeps them out of its lattice, never does;
- BPE: sentencepiece merges two adjacent symbols when their concatenation is a piece, the
  highest-scored piece first; as a merge list that is every split (a, b) of every normal piece
  into two normal pieces, ranked by the merged piece's score (best first);
- the normaliser redoes sentencepiece's: its precompiled character map (none for the identity
  rule), whitespace folding, the dummy prefix, then " " -> "▁"; no pre-tokenizer (sentencepiece
  encodes the normalised text whole);
- byte fallback (`<0xAB>` pieces) where the model has it; the decoder undoes ▁ and bytes.

The byte tokenizer becomes a byte-level BPE without merges: ids 1..255 are the bytes' printable
stand-ins, id 0 (its end-of-document token, the NUL byte the corpus readers refuse) the special
token "<|endoftext|>".

Where the ids can differ (`tests/data/test_hf_tokenizer.py` checks tricky texts and the
corpus): a text that spells out a special token ("</s>") is that token for `transformers` (the
project's own reader turns `encode_special_tokens` on and gets sentencepiece's ids); a Unigram
text that spells out a control or byte piece ("</s>", "<0x41>") holding a character the model
has no piece for (`tokenizers` keeps every vocabulary entry in its lattice, and the unknown
token, the only other way past that character, scores below `NEVER`); a BPE tie between two
splits of one piece that overlap is broken by split position, where sentencepiece takes the
leftmost; the byte tokenizer's NUL byte has no id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from param_decomp.text.hf_tokenizer import HFTokenizer, byte_level_chars
from param_decomp.text.tokenizers import (
    ByteTokenizer,
    DataError,
    SentencePieceTokenizer,
    Tokenizer,
)

NEVER = -1.0e9  # Unigram score of pieces sentencepiece never produces from text
BYTE_EOD = "<|endoftext|>"
# sentencepiece ModelProto enums
UNIGRAM, BPE = 1, 2
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class ConvertedTokenizer:
    """A `tokenizers.Tokenizer` and the special tokens tokenizer_config.json names."""

    tokenizer: Any
    eos_token: str
    unk_token: str | None = None
    bos_token: str | None = None
    pad_token: str | None = None


def _proto(tok: SentencePieceTokenizer) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.model_proto)
    return proto


def _normalizer(spec: Any, trainer: Any) -> Any:
    from tokenizers import Regex, normalizers

    steps: list[Any] = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(Regex(" {2,}"), " "),
            normalizers.Replace(Regex("^ | $"), ""),
        ]
    if spec.add_dummy_prefix:
        if trainer.treat_whitespace_as_suffix:
            raise DataError("<sentencepiece>", "treat_whitespace_as_suffix is not supported")
        steps.append(normalizers.Prepend(" "))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    return normalizers.Sequence(steps)


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, best-scored piece first."""
    normal = {p for p, _, kind in pieces if kind in (NORMAL, USER_DEFINED)}
    order = sorted(
        (i for i, (_, _, kind) in enumerate(pieces) if kind == NORMAL),
        key=lambda i: (-pieces[i][1], i),
    )
    merges: list[tuple[str, str]] = []
    for i in order:
        piece = pieces[i][0]
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                merges.append((left, right))
    return merges


def from_sentencepiece(tok: SentencePieceTokenizer) -> ConvertedTokenizer:
    """The sentencepiece model as a `tokenizers.Tokenizer` with the same ids (module doc)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    proto = _proto(tok)
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, float(p.score), int(p.type)) for p in proto.pieces]
    byte_fallback = bool(trainer.byte_fallback)
    unk = next((i for i, (_, _, kind) in enumerate(pieces) if kind == UNKNOWN), None)
    if trainer.model_type == UNIGRAM:
        vocab = [(p, s if kind in (NORMAL, USER_DEFINED) else NEVER) for p, s, kind in pieces]
        model = models.Unigram(vocab, unk_id=unk, byte_fallback=byte_fallback)
    elif trainer.model_type == BPE:
        model = models.BPE(
            {p: i for i, (p, _, _) in enumerate(pieces)},
            _bpe_merges(pieces),
            unk_token=None if unk is None else pieces[unk][0],
            byte_fallback=byte_fallback,
            fuse_unk=True,
        )
    else:
        kind = {3: "word", 4: "char"}.get(trainer.model_type, str(trainer.model_type))
        msg = f"a sentencepiece {kind} model cannot be converted (unigram and bpe can)"
        raise DataError(tok.source, msg)
    hf = Tokenizer(model)
    hf.normalizer = _normalizer(spec, trainer)
    steps = [decoders.Replace("\u2581", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    hf.decoder = decoders.Sequence(steps)
    specials = [p for p, _, kind in pieces if kind in (CONTROL, UNKNOWN)]
    hf.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    users = [p for p, _, kind in pieces if kind == USER_DEFINED]
    if users:
        hf.add_tokens([AddedToken(p, special=False, normalized=True) for p in users])

    def piece(i: int) -> str | None:
        return pieces[i][0] if 0 <= i < len(pieces) else None

    eos = piece(tok.eod_id)
    assert eos is not None
    return ConvertedTokenizer(
        hf,
        eos,
        unk_token=None if unk is None else pieces[unk][0],
        bos_token=piece(trainer.bos_id),
        pad_token=piece(trainer.pad_id),
    )


def from_bytes() -> ConvertedTokenizer:
    """The byte tokenizer as a byte-level BPE without merges (module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    chars = byte_level_chars()
    vocab = {BYTE_EOD: ByteTokenizer.eod_id}
    vocab.update({chars[b]: b for b in range(256) if b != ByteTokenizer.eod_id})
    hf = Tokenizer(models.BPE(vocab, []))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(BYTE_EOD, special=True, normalized=False)])
    return ConvertedTokenizer(hf, BYTE_EOD)


def to_hf_tokenizer(tok: Tokenizer) -> ConvertedTokenizer:
    """Any of the project's tokenizers as a `tokenizers.Tokenizer` with the same ids."""
    if isinstance(tok, ByteTokenizer):
        return from_bytes()
    if isinstance(tok, SentencePieceTokenizer):
        return from_sentencepiece(tok)
    if isinstance(tok, HFTokenizer):
        vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
        eos = next(t for t, i in vocab.items() if i == tok.eod_id)
        return ConvertedTokenizer(tok.tokenizer, eos)
    raise TypeError(f"no tokenizer.json conversion for {type(tok).__name__}")


def write_tokenizer_files(converted: ConvertedTokenizer, folder: Path, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json (a `PreTrainedTokenizerFast` adding no BOS/EOS)
    and special_tokens_map.json into `folder`."""
    converted.tokenizer.save(str(folder / "tokenizer.json"))
    specials = {
        f"{name}_token": value
        for name in ("bos", "eos", "unk", "pad")
        if (value := getattr(converted, f"{name}_token")) is not None
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
