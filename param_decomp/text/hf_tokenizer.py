"""A Hugging Face `tokenizer.json` as the project's tokenizer (`data.tokenizer: {kind: hf}`).

The file is read through the `tokenizers` library. Two families get an exact bytes-per-token
table (bits per byte and bytes-weighted CE divide by it):

- byte-level BPE (GPT-2 style: a `ByteLevel` pre-tokenizer or decoder): every character of a
  token stands for one byte (the byte <-> printable-character map of `byte_level_chars`);
- sentencepiece style (a `Metaspace` step or a `Replace` of " " by "▁"): the metaspace counts
  one byte (it stands for a space), a byte-fallback piece `<0xAB>` one byte, every other
  token the UTF-8 length of its text.

Special tokens and the unknown token count zero bytes; a non-special added token the UTF-8
length of its content. When the file's normaliser keeps the text (no dummy prefix, no NFKC,
no whitespace folding), the table summed over a text's ids is the text's UTF-8 length.

Special tokens are not matched in the text (`encode_special_tokens`): a corpus that contains
"</s>" is tokenised as those characters, as sentencepiece does, never as the end-of-document
id, which the token store appends itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Int

from param_decomp.text.tokenizers import DataError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SUPPORTED_MODELS = ("BPE", "Unigram")
# end-of-document candidates when tokenizer_config.json names no eos_token
EOS_NAMES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>", "<|eot_id|>")
METASPACE = "\u2581"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def byte_level_chars() -> tuple[str, ...]:
    """The printable character standing for each byte 0..255 in byte-level BPE vocabularies:
    the printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the
    other 68 take the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(0x100 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def tokenizer_file(path: str | Path) -> Path:
    """`path` itself when it is a file, else `path/tokenizer.json`."""
    path = Path(path).expanduser()
    return path if path.is_file() else path / TOKENIZER_FILE


def _steps(node: Any) -> list[dict[str, Any]]:
    """Every component dict of a normalizer / pre_tokenizer / decoder, Sequences flattened."""
    if isinstance(node, list):
        return [s for n in node for s in _steps(n)]
    if not isinstance(node, dict):
        return []
    inner = node.get("normalizers") or node.get("pretokenizers") or node.get("decoders")
    return _steps(inner) if node.get("type") == "Sequence" else [node]


def _scheme(raw: dict[str, Any]) -> tuple[str, str | None]:
    """("byte_level", None) or ("metaspace", the space stand-in or None) from the file's
    normalizer, pre-tokenizer and decoder."""
    steps = [s for key in ("normalizer", "pre_tokenizer", "decoder") for s in _steps(raw.get(key))]
    if any(s.get("type") == "ByteLevel" for s in steps):
        return "byte_level", None
    for s in steps:
        if s.get("type") == "Metaspace":
            return "metaspace", s.get("replacement", METASPACE)
        pattern = s.get("pattern") if s.get("type") == "Replace" else None
        if isinstance(pattern, dict) and pattern.get("String") == " ":
            return "metaspace", s.get("content")
    return "metaspace", None


class HFTokenizer:
    """A `tokenizer.json` (BPE or Unigram) with the end-of-document token and bytes table."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = tokenizer_file(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(self.path, "tokenizer file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(self.path, f"not readable ({err})") from None
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise DataError(self.path, f"not JSON ({err})") from None
        model = raw.get("model") if isinstance(raw, dict) else None
        kind = model.get("type") if isinstance(model, dict) else None
        if kind not in SUPPORTED_MODELS:
            shown = "no model block" if kind is None else f"model type {kind!r}"
            msg = f"{shown} is not supported; supported: {', '.join(SUPPORTED_MODELS)}"
            raise DataError(self.path, msg)
        try:
            self._tok = Tokenizer.from_str(text)
        except Exception as err:  # the library raises a bare Exception on a bad file
            raise DataError(self.path, f"not a tokenizers file ({err})") from None
        self._tok.encode_special_tokens = True
        self.raw, self.kind = raw, kind
        self.sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.vocab_size = max(
            self._tok.get_vocab_size(with_added_tokens=True),
            1 + max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1),
        )
        self._eod = self._find_eod()

    @classmethod
    def from_path(cls, path: str | Path) -> HFTokenizer:
        """The tokenizer of `path` (a folder holding tokenizer.json, or the file), parsed once
        per process while the file is unchanged (the config check and the token store share
        it)."""
        file = tokenizer_file(path)
        if not file.is_file():
            raise DataError(file, "tokenizer file not found")
        stat = file.stat()
        return _load(file.resolve(), stat.st_mtime_ns, stat.st_size)

    @property
    def tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer` itself."""
        return self._tok

    def sha256(self) -> str:
        return self.sha

    def _find_eod(self) -> int | None:
        """tokenizer_config.json's eos_token, else a special token with a usual EOS name."""
        config = self.path.parent / CONFIG_FILE
        names: list[str] = []
        if config.is_file():
            try:
                eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
            except (OSError, ValueError, AttributeError) as err:
                raise DataError(config, f"not readable JSON ({err})") from None
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str):
                names.append(eos)
        specials = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        names += [n for n in EOS_NAMES if n in specials]
        for name in names:
            found = self._tok.token_to_id(name)
            if found is not None:
                return int(found)
        return None

    @property
    def eod_id(self) -> int:
        """The end-of-sentence token (zero bytes) that separates packed documents."""
        if self._eod is None:
            raise DataError(
                self.path,
                f"no end-of-document token: {CONFIG_FILE} beside it names no eos_token and no "
                f"special token is one of {list(EOS_NAMES)}",
            )
        return self._eod

    def encode(self, text: str) -> Int[np.ndarray, " n"]:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids: Int[np.ndarray, " n"]) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids)], skip_special_tokens=False)

    def bytes_per_token(self) -> Int[np.ndarray, " vocab"]:
        """Bytes each id stands for (module docstring): exact for byte-level BPE and for
        sentencepiece-style files."""
        scheme, space = _scheme(self.raw)
        byte_of = {c: b for b, c in enumerate(byte_level_chars())}
        model = self.raw["model"]
        byte_fallback = bool(model.get("byte_fallback", False))
        unknown = {model.get("unk_token"), None}
        unk_id = model.get("unk_id") if self.kind == "Unigram" else None
        added = self._tok.get_added_tokens_decoder()
        table = np.zeros((self.vocab_size,), np.int32)
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if i in added:
                table[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
            elif token in unknown or i == unk_id:
                table[i] = 0
            elif scheme == "byte_level" and all(c in byte_of for c in token):
                table[i] = len(token)
            elif byte_fallback and _BYTE_PIECE.match(token):
                table[i] = 1
            else:
                text = token.replace(space, " ") if space else token
                table[i] = len(text.encode("utf-8"))
        return table


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int, size: int) -> HFTokenizer:
    """One parse per (file, version): mtime and size in the key, so an edited file reloads."""
    return HFTokenizer(path)
