"""Token ids -> the text each token contributes, and visible renderings of it (S14.7).

Decoding each id alone loses what a tokenizer does at boundaries (sentencepiece drops the
leading space of a piece), so a token's text is what it adds to the decoded prefix; where that
completes a character, the token shows that character; a byte that is only part of one is
shown as its hex value.
"""

from __future__ import annotations

import os
import unicodedata

import numpy as np
from jaxtyping import Int

from param_decomp.text.tokenizers import Tokenizer

EOD_TEXT = "⟨eod⟩"
_VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}
_ASCII = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def token_strings(tokenizer: Tokenizer, ids: Int[np.ndarray, " n"]) -> list[str]:
    """The raw text of every token of `ids` (the end-of-document token as EOD_TEXT)."""
    ids = np.asarray(ids).reshape(-1)
    eod = tokenizer.eod_id
    out: list[str] = []
    prefix = ""
    for i, tok in enumerate(ids):
        if int(tok) == eod:
            out.append(EOD_TEXT)
            continue
        text = tokenizer.decode(ids[: i + 1][ids[: i + 1] != eod])
        common = os.path.commonprefix([prefix, text])
        if set(prefix[len(common) :]) <= {"\ufffd"}:  # extended, or completed a character
            piece = text[len(common) :]
        else:
            piece = tokenizer.decode(np.asarray([tok]))
        if "\ufffd" in piece:  # part of a character: name the byte where ids are bytes
            piece = f"<0x{int(tok):02X}>" if tokenizer.vocab_size <= 256 else "\ufffd"
        out.append(piece)
        prefix = text
    return out


def _control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf") and ch not in _VISIBLE


def visible_html_text(text: str) -> str:
    """Display text for the HTML page (not yet escaped): newline, tab and carriage return as
    arrows, other control characters as \\xNN, a token of only spaces as middle dots."""
    if text and set(text) == {" "}:
        return "·" * len(text)
    shown = [_VISIBLE.get(ch, f"\\x{ord(ch):02x}" if _control(ch) else ch) for ch in text]
    return "".join(shown)


def ascii_label(text: str) -> str:
    """A tick label for matplotlib: escapes as in Python source, spaces-only as dots, and `$`
    escaped so matplotlib never reads it as maths."""
    if text and set(text) == {" "}:
        return "·" * len(text)
    shown = "".join(_ASCII.get(ch, f"\\x{ord(ch):02x}" if _control(ch) else ch) for ch in text)
    return shown.replace("$", r"\$") or "''"
