"""Helpers for the figure tests: read what a PNG says it shows (its text chunks)."""

from pathlib import Path

from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_text(path: Path) -> tuple[str, str]:
    """(Title, Description) that `save_png` wrote into the PNG, after checking it is a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path
    with Image.open(path) as image:
        image.load()
        text = dict(image.text)
    return text.get("Title", ""), text.get("Description", "")
