"""HTML pieces shared by every page: escaping, inline JSON, number formatting, the page shell.

Every text that comes from the harvest (token pieces, site names, notes) passes through
`text` or `json_for_script`, so a token such as `</script><img onerror=...>` shows as text.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from param_decomp.eval.token_text import visible_html_text

ASSETS = "assets"


def text(value: object) -> str:
    """Escape for element content and quoted attribute values."""
    return html.escape(str(value), quote=True)


def token_text(piece: str) -> str:
    """A token piece as shown (newline as ↵, spaces-only as dots, controls as \\xNN), escaped."""
    return text(visible_html_text(piece))


def json_for_script(data: Any) -> str:
    """JSON that is safe inside `<script type="application/json">`: no `<` can end the element
    (`\\u003c` is the same string to JSON.parse), and no NaN/Infinity, which JSON lacks."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace(
        "<", "\\u003c"
    )


def number(value: float | None, digits: int = 3) -> str:
    """Short display of a statistic: `digits` significant figures, `–` when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def finite(value: float | None, digits: int = 6) -> float | None:
    """A float for inline JSON, rounded; None where JSON has no value (NaN, ±inf)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def page(title: str, body: str, root: str, scripts: bool = False) -> str:
    """A full page: `root` is the relative path back to the site root ('' or '../../');
    the stylesheet and script are the local files the command writes, never a URL."""
    script = (
        f'<script src="{root}{ASSETS}/vocab.js"></script>\n'
        f'<script src="{root}{ASSETS}/browse.js"></script>\n'
        if scripts
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{text(title)}</title>\n"
        f'<link rel="stylesheet" href="{root}{ASSETS}/style.css">\n'
        "</head>\n<body>\n"
        f"{body}\n{script}</body>\n</html>\n"
    )
