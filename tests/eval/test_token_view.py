"""The per-token view of the figure tier (SPEC S14.7): token texts, the top-component ranking
with a different C per site, the self-contained HTML page and the PNG."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from figure_checks import png_text

from param_decomp.eval.token_text import EOD_TEXT, ascii_label, token_strings, visible_html_text
from param_decomp.eval.token_view import Pick, plot_token_ci, top_components, write_token_html
from param_decomp.text.tokenizers import ByteTokenizer


def test_s14_7_byte_tokens_keep_text_and_show_partial_characters() -> None:
    tok = ByteTokenizer()
    ids = np.concatenate([tok.encode("a é\n"), [tok.eod_id], tok.encode("\tb")])
    assert token_strings(tok, ids) == ["a", " ", "<0xC3>", "é", "\n", EOD_TEXT, "\t", "b"]


def test_s14_7_visible_whitespace_and_controls() -> None:
    assert visible_html_text("  ") == "··"
    assert visible_html_text("\n") == "↵" and visible_html_text("\t") == "⇥"
    assert visible_html_text("a\x00b") == "a\\x00b"
    assert visible_html_text(" the") == " the"  # a space inside a word token stays a space
    assert ascii_label("$x$") == r"\$x\$" and ascii_label("\n") == "\\n" and ascii_label("") == "''"


def test_s14_7_top_components_rank_by_mean_over_sites_with_own_C() -> None:
    ci = {
        "a": np.array([[0.9, 0.0, 0.2], [0.7, 0.0, 0.2]]),  # C = 3: means 0.8, 0, 0.2
        "b": np.array([[0.5, 0.1, 0.0, 0.0, 1.0], [0.5, 0.1, 0.0, 0.0, 1.0]]),  # C = 5
    }
    picks = top_components(ci, per_site=2)
    assert [(p.site, p.component) for p in picks] == [("b", 4), ("a", 0), ("b", 0), ("a", 2)]
    assert [round(p.mean_ci, 6) for p in picks] == [1.0, 0.8, 0.5, 0.2]
    assert len(top_components(ci, per_site=10)) == 8  # every component of each site's own C


def _page(tmp_path: Path) -> tuple[Path, list[str], dict[str, np.ndarray], list[Pick]]:
    tokens = ["<script>alert(1)</script>", " &amp;", "\n", "  ", 'q"uote', "x"]
    ci = {
        "layers.0.mlp.up": np.array([[0, 1], [0.5, 0], [1, 0], [0.25, 0], [0, 0], [0, 1]]),
        "layers.0.attn.v": np.array([[0.0], [0.0], [0.0], [0.0], [0.9], [0.0]]),
    }
    picks = top_components(ci, per_site=2)
    path = write_token_html(tokens, list(range(6)), ci, picks, tmp_path / "t.html", "run <x>")
    return path, tokens, ci, picks


def test_s14_7_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    path, tokens, ci, picks = _page(tmp_path)
    page = path.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page  # the token text is escaped, never markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert " &amp;amp;" in page and "q&quot;uote" in page and "run &lt;x&gt;" in page
    assert "↵</span><br>" in page and ">··</span>" in page
    # no network: no external URL, stylesheet link or src attribute
    assert not re.search(r"https?://|<link|\bsrc=|@import|url\(", page)
    assert page.count("<script") == 2  # the JSON data and the inline code
    data = json.loads(re.search(r'id="pd-data">(.*?)</script>', page, re.S).group(1))
    assert data["ids"] == list(range(6)) and len(data["ci"]) == len(picks)
    first = picks[0]
    np.testing.assert_allclose(data["ci"][0], ci[first.site][:, first.component])
    options = re.findall(r'<option value="(\d+)"[^>]*>([^<]*)</option>', page)
    assert [int(v) for v, _ in options] == list(range(len(picks)))
    assert options[0][1].startswith(f"{first.site} · component {first.component} (mean CI")
    spans = re.findall(r'<span class="tok[^"]*" data-i="(\d+)" style="([^"]*)"', page)
    assert len(spans) == len(tokens)  # server-side colours: readable without JS
    assert (first.site, first.component) == ("layers.0.mlp.up", 1)  # mean 1/3, the largest
    assert [style for _, style in spans] == [
        f"background-color: rgba(230, 85, 13, {v:.4f})" for v in (1, 0, 0, 0, 0, 1)
    ]


def test_s14_7_token_png_names_rows_and_columns(tmp_path: Path) -> None:
    _, tokens, ci, picks = _page(tmp_path)
    title, desc = png_text(plot_token_ci(tokens, ci, picks, tmp_path / "t.png", "step 3"))
    assert title == "Causal importance per token of one val sequence, step 3"
    assert "first 6 of 6 tokens x top 3 components" in desc
    assert "y: token position: token text" in desc and "x: component (site, index)" in desc


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--proxy-server=127.0.0.1:9",  # any request that still tried would fail: no network
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
_ALPHA = re.compile(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)")


def _alphas(colours: list[str]) -> list[float]:
    """The opacity of each computed background colour (rgb(...) is opaque)."""
    out = []
    for colour in colours:
        m = _ALPHA.fullmatch(colour)
        assert m is not None, colour
        out.append(1.0 if m.group(4) is None else float(m.group(4)))
    return out


def test_s14_7_html_in_headless_chromium(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Real chromium, no network: the tokens render as the visible text with highlighted
    backgrounds (opacity = the first pick's CI); picking another component re-colours them
    with its CI; the page fetched nothing."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): "
            "apt-get install chromium chromium-driver (make install tries when root)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')"
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver
    path, tokens, ci, picks = _page(tmp_path)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(path.resolve().as_uri())
        spans = driver.find_elements(By.CSS_SELECTOR, "#pd-tokens .tok")
        assert [s.text for s in spans] == [visible_html_text(t) for t in tokens]

        def backgrounds() -> list[float]:
            return _alphas([s.value_of_css_property("background-color") for s in spans])

        def expected(pick: Pick) -> list[float]:
            return [round(float(v), 4) for v in ci[pick.site][:, pick.component]]

        before = backgrounds()
        assert sum(a > 0 for a in before) >= 2  # highlighted, not the default background
        np.testing.assert_allclose(before, expected(picks[0]), atol=2e-3)
        picker = Select(driver.find_element(By.ID, "pd-picker"))
        assert picker.first_selected_option.text == picks[0].label
        picker.select_by_index(2)
        after = backgrounds()
        assert after != before
        np.testing.assert_allclose(after, expected(picks[2]), atol=2e-3)
        assert "CI 0.900" in spans[4].get_attribute("title")  # the tooltip follows the pick
        resources = driver.execute_script("return performance.getEntriesByType('resource')")
        assert resources == []
    finally:
        driver.quit()
