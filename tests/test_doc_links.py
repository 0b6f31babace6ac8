"""Every relative link in the README and the docs resolves (issue 32): the README is short and
points into docs/, so a moved or renamed page must not leave a dead link behind. Anchors into
markdown files are checked against GitHub's heading slugs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted(
    {
        REPO / "README.md",
        REPO / "bench" / "README.md",
        *(REPO / "docs").glob("*.md"),
        *(REPO / "param_decomp").rglob("README.md"),
    }
)
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without code blocks and code spans: a `[x](y)` inside code is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Targets of the inline markdown links and images in `text`."""
    return LINK.findall(_prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces → '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings suffixed -1, -2, ... as GitHub
    does."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(doc: Path) -> list[str]:
    """Links of `doc` whose file, or whose anchor in a markdown file, does not exist."""
    text = doc.read_text()
    broken = []
    for target in links(text):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest.read_text()):
            broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(doc: Path) -> None:
    assert broken_links(doc) == []


def test_checker_finds_broken_links(tmp_path: Path) -> None:
    """The walker itself: a dead file, a dead anchor and a link in code (ignored)."""
    (tmp_path / "other.md").write_text("# A title, with `code`!\n\n## Twice\n\n## Twice\n")
    doc = tmp_path / "page.md"
    doc.write_text(
        "[ok](other.md#a-title-with-code) [ok](other.md#twice-1) [web](https://x.y/z.md)\n"
        "![fig](missing.png) [bad](other.md#nope) [self](#here)\n\n"
        "## Here\n\n`[not a link](gone.md)`\n\n```\n[nor this](gone.md)\n```\n"
    )
    assert broken_links(doc) == ["missing.png: no such file", "other.md#nope: no such heading"]
