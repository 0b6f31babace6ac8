"""The component browser in a real headless Chromium, offline (issue 21, acceptance 2).

One walk through the site does what a reader does: open the overview and a site's table from it,
sort the table (by density, mean CI, top PMI and the ablation effect), search it by a token,
follow a component link, check the highlighted contexts against the harvested tables, follow
a co-active partner, and check that nothing was requested outside the file system. The same
walk must fail on a site with one link, one highlight, one token text, one effect or one
request broken:
`test_the_walk_catches_a_broken_site` corrupts each in turn.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from browse_fixture import SyntheticHarvest, write_synthetic_harvest

from param_decomp.browse.layout import component_path, site_slugs
from param_decomp.browse.markup import json_for_script
from param_decomp.browse.site import write_site
from param_decomp.eval.token_text import visible_html_text

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--proxy-server=127.0.0.1:9",  # a request that still tried would fail: no network
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
SITES = {
    "layers.0.mlp.up": (12, False),
    "layers.0.mlp.down": (16, True),
    "layers.1.attn<o>": (8, True),
}
TABLE_SITE = "layers.0.mlp.down"
QUERY = "<script>alert(1)</script>"  # token 0 of the synthetic vocabulary
ALPHA_TOL = 1 / 255 + 1e-3  # CI shown in thousandths, an 8-bit alpha in the browser
_NETWORK = re.compile(r"(?:https?|wss?|ftp)://", re.I)
_RGBA = re.compile(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)")

READ_CONTEXTS = """
return [...document.querySelectorAll('#' + arguments[0] + ' .ctx')].map((ctx) =>
  [...ctx.querySelectorAll('.tok')].map((t) =>
    [t.textContent, getComputedStyle(t).backgroundColor, t.classList.contains('peak')]));
"""
READ_ROWS = """
return [...document.querySelectorAll('#component-rows tr')].map((tr) =>
  [Number(tr.dataset.component), tr.querySelector('a').getAttribute('href')]);
"""


@pytest.fixture(scope="module")
def harvest(tmp_path_factory: pytest.TempPathFactory) -> SyntheticHarvest:
    return write_synthetic_harvest(tmp_path_factory.mktemp("browse_chromium") / "run", SITES)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): "
            "apt-get install chromium chromium-driver (make install tries when root)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        profile = tmp_path_factory.mktemp("chromium_profile")
        for flag in (*BROWSER_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
        browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get("about:blank")
        yield browser
    finally:
        browser.quit()


def start_component(h: SyntheticHarvest) -> int:
    """The table site's first component with token 0 among its input tokens (the walk's
    search hit), contexts and co-active partners."""
    t = h.tables["input_tokens"].to_pylist()
    hits = sorted({r["component"] for r in t if r["site"] == TABLE_SITE and r["token"] == 0})
    return next(c for c in hits if h.rows("coactivation", TABLE_SITE, c))


# ---- the checks ------------------------------------------------------------------------------


def _alpha(colour: str) -> float:
    match = _RGBA.fullmatch(colour)
    assert match is not None, colour
    return 1.0 if match.group(4) is None else float(match.group(4))


def _wait_for_navigation(driver: WebDriver, old_url: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 10).until(
            lambda d: (
                d.current_url != old_url
                and d.execute_script("return document.readyState") == "complete"
            )
        )
    except TimeoutException as err:
        raise AssertionError(f"no navigation away from {old_url}") from err


def check_sorting(driver: WebDriver, h: SyntheticHarvest) -> None:
    """Each sortable column orders the rows by the harvested value (missing values last,
    ties by component); a second click reverses."""
    from selenium.webdriver.common.by import By

    comps = h.rows_of_site("components", TABLE_SITE)
    stat = {
        "density": {r["component"]: r["density"] for r in comps},
        "mean_ci": {r["component"]: r["mean_ci"] for r in comps},
        "pmi": {r["component"]: None for r in comps},
    }
    for r in h.tables["input_tokens"].to_pylist():
        if r["site"] == TABLE_SITE and r["by"] == "pmi" and r["rank"] == 0:
            stat["pmi"][r["component"]] = r["pmi"]
    stat["effect"] = {r["component"]: None for r in comps}  # the reservoir's KL, else the top's
    for r in sorted(h.rows_of_site("ablation", TABLE_SITE), key=lambda r: r["sample"] != "top"):
        stat["effect"][r["component"]] = r["kl"]
    for key, clicks in (("density", 2), ("mean_ci", 1), ("pmi", 1), ("effect", 2)):
        for click in range(clicks):
            driver.find_element(By.CSS_SELECTOR, f'th[data-key="{key}"] button').click()
            desc = click == 0
            values = stat[key]
            known = sorted(
                (c for c in values if values[c] is not None),
                key=lambda c: ((-1 if desc else 1) * values[c], c),
            )
            expected = known + sorted(c for c in values if values[c] is None)
            got = [c for c, _ in driver.execute_script(READ_ROWS)]
            assert got == expected, f"sorted by {key} ({'desc' if desc else 'asc'})"
            script = f"return document.querySelector('th[data-key={key}]').ariaSort"
            assert driver.execute_script(script) == ("descending" if desc else "ascending")


def check_search(driver: WebDriver, h: SyntheticHarvest, query: str, tokens: set[int]) -> list[int]:
    """Typing `query` keeps exactly the components whose input tokens include one of
    `tokens`; returns them."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "token-search")
    box.clear()
    box.send_keys(query)
    inputs = h.tables["input_tokens"].to_pylist()
    expected = {r["component"] for r in inputs if r["site"] == TABLE_SITE and r["token"] in tokens}
    got = [c for c, _ in driver.execute_script(READ_ROWS)]
    assert sorted(got) == sorted(expected) and len(got) == len(set(got)), query
    status = driver.find_element(By.ID, "table-status").text
    assert f"{len(expected)} of {len(h.rows_of_site('components', TABLE_SITE))}" in status
    return got


def check_component_page(driver: WebDriver, h: SyntheticHarvest, site: str, comp: int) -> None:
    """The page is (site, comp), its top contexts and reservoir samples show the harvested
    tokens with backgrounds at the harvested CI, peak outlined, and its input-token tables
    the harvested tokens in rank order."""
    script = "const h = document.getElementById('component-title');" + (
        "return h && [h.dataset.site, h.dataset.component]"
    )
    assert driver.execute_script(script) == [site, str(comp)], (
        f"landed on the wrong page: {driver.current_url}"
    )
    for box, table in (("top-contexts", "top_contexts"), ("reservoir", "reservoir")):
        shown = driver.execute_script(READ_CONTEXTS, box)
        truth = h.rows(table, site, comp)
        assert len(shown) == len(truth), box
        for n, (ctx, row) in enumerate(zip(shown, truth, strict=True)):
            where = f"{site} #{comp} {box} context {n}"
            texts = [t for t, _, _ in ctx]
            assert texts == [visible_html_text(h.vocab[t]) for t in row["tokens"]], where
            alphas = [_alpha(colour) for _, colour, _ in ctx]
            assert max(alphas) > 0.5, where  # highlighted at all (the peak is > 0.75)
            np.testing.assert_allclose(alphas, row["ci_values"], atol=ALPHA_TOL, err_msg=where)
            assert [i for i, (_, _, peak) in enumerate(ctx) if peak] == [row["center"]], where
    inputs = h.rows("input_tokens", site, comp)
    for by in ("count", "pmi"):
        script = f"return [...document.querySelectorAll('table.input-{by} .chip')]" + (
            ".map((c) => c.textContent)"
        )
        want = [visible_html_text(h.vocab[r["token"]]) for r in inputs if r["by"] == by]
        assert driver.execute_script(script) == want, by


def check_offline(driver: WebDriver) -> int:
    """Since the last call, every request a file:// page made (Chromium's network log) and
    every resource the current page loaded had a file:// URL, and no request of any page
    went to the network; returns how many requests our pages made. (The browser's own
    chrome:// pages, such as its first new-tab page, are not ours: only their network
    requests would count.)"""
    ours, network = [], []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if message["params"].get("documentURL", "").startswith("file://"):
                ours.append(url)
            if _NETWORK.match(url):
                network.append(url)
    script = "return performance.getEntriesByType('resource').map((e) => e.name)"
    ours += driver.execute_script(script)
    leaving = [u for u in ours if not u.startswith("file://")] + network
    assert leaving == [], f"requests outside the file system: {leaving}"
    return len(ours)


def walk(driver: WebDriver, h: SyntheticHarvest, site_dir: Path) -> None:
    """The reader's path through the site, every step checked against the harvest."""
    from selenium.webdriver.common.by import By

    driver.get_log("performance")  # start the network log afresh
    driver.get((site_dir / "index.html").as_uri())
    shown_sites = driver.execute_script(
        "return [...document.querySelectorAll('#sites tbody tr')].map((r) => r.dataset.site)"
    )
    assert shown_sites == list(h.sites), "the overview lists the harvested sites"
    row = driver.find_elements(By.CSS_SELECTOR, "#sites tbody tr")[shown_sites.index(TABLE_SITE)]
    old = driver.current_url
    row.find_element(By.TAG_NAME, "a").click()
    _wait_for_navigation(driver, old)
    title = driver.execute_script("return document.getElementById('site-title')?.dataset.site")
    assert title == TABLE_SITE, f"landed on the wrong page: {driver.current_url}"
    check_sorting(driver, h)
    check_search(driver, h, " THE ", {6, 7})  # " the" and "The": case and spaces ignored
    hits = check_search(driver, h, QUERY, {0})
    comp = start_component(h)
    assert comp in hits
    link = driver.find_element(By.CSS_SELECTOR, f'#component-rows tr[data-component="{comp}"] a')
    old = driver.current_url
    link.click()
    _wait_for_navigation(driver, old)
    check_component_page(driver, h, TABLE_SITE, comp)
    partner = h.rows("coactivation", TABLE_SITE, comp)[0]
    old = driver.current_url
    driver.find_elements(By.CSS_SELECTOR, "a.partner")[0].click()
    _wait_for_navigation(driver, old)
    check_component_page(driver, h, partner["partner_site"], partner["partner_component"])
    assert check_offline(driver) >= 8  # four pages, each with its stylesheet and scripts


# ---- the tests -------------------------------------------------------------------------------


def _site(h: SyntheticHarvest, out: Path) -> tuple[Path, Path]:
    """A fresh site, and the path of the walk's first component page in it."""
    shutil.rmtree(out, ignore_errors=True)
    write_site(h.run_dir, out)
    slug = site_slugs(list(h.sites))[TABLE_SITE]
    return out, out / component_path(slug, start_component(h))


def test_the_walk_passes_on_the_written_site(
    driver: WebDriver, harvest: SyntheticHarvest, tmp_path: Path
) -> None:
    site, _ = _site(harvest, tmp_path / "site")
    walk(driver, harvest, site)


def _corrupt_contexts(page: str, change: Callable[[dict], None]) -> str:
    pattern = re.compile(r'(<script id="pd-contexts" type="application/json">)(.*?)(</script>)')
    match = pattern.search(page)
    data = json.loads(match.group(2))
    change(data)
    return page[: match.start(2)] + json_for_script(data) + page[match.end(2) :]


def _break_ci(data: dict) -> None:
    ctx = data["top"][0]
    j = (ctx["k"] + 1) % len(ctx["c"])  # a token beside the peak
    ctx["c"][j] = (ctx["c"][j] + 500) % 1000


@pytest.mark.parametrize(
    "broken, message",
    [
        ("partner_href", "landed on the wrong page"),
        ("highlight", "top-contexts context 0"),
        ("token_text", "top-contexts context 0"),
        ("effect", "sorted by effect"),
        ("request", "requests outside the file system"),
    ],
)
def test_the_walk_catches_a_broken_site(
    driver: WebDriver, harvest: SyntheticHarvest, tmp_path: Path, broken: str, message: str
) -> None:
    """One link to a wrong (existing) partner page, one CI value, one token's text, or one
    image from the network: the walk fails, naming what broke."""
    site, page_path = _site(harvest, tmp_path / "site")
    page = page_path.read_text(encoding="utf-8")
    if broken == "partner_href":
        first = re.search(r'<a class="partner" href="([^"]+)"', page).group(1)
        wrong = re.sub(r"/(\d+)\.html$", lambda m: f"/{(int(m.group(1)) + 1) % 8}.html", first)
        assert wrong != first and (page_path.parent / wrong).resolve().is_file()
        page = page.replace(f'href="{first}"', f'href="{wrong}"', 1)
    elif broken == "highlight":
        page = _corrupt_contexts(page, _break_ci)
    elif broken == "token_text":  # in the shared vocabulary: a piece the first context shows
        vocab_js = site / "assets" / "vocab.js"
        data = json.loads(page[page.index('"pd-contexts"') :].split(">", 1)[1].split("<")[0])
        token = next(t for t in data["top"][0]["t"] if t not in (0, 6, 7))  # not searched for
        text = vocab_js.read_text(encoding="utf-8")
        piece = json.dumps(visible_html_text(harvest.vocab[token]), ensure_ascii=False)
        assert f'"{token}":{piece}' in text
        vocab_js.write_text(text.replace(f'"{token}":{piece}', f'"{token}":"x{piece[1:]}'))
    elif broken == "effect":  # the site table's effect of its two largest swapped
        table_path = site / "sites" / site_slugs(list(harvest.sites))[TABLE_SITE] / "index.html"
        table = table_path.read_text(encoding="utf-8")
        pattern = re.compile(r'(<script id="pd-table" type="application/json">)(.*?)(</script>)')
        match = pattern.search(table)
        data = json.loads(match.group(2))
        a, b = sorted((r for r in data["rows"] if r[6] is not None), key=lambda r: -r[6])[:2]
        a[6], b[6] = b[6], a[6]
        table_path.write_text(
            table[: match.start(2)] + json_for_script(data) + table[match.end(2) :],
            encoding="utf-8",
        )
    else:
        page = page.replace("</nav>", '</nav><img src="http://192.0.2.1/pixel.png" alt="">', 1)
    page_path.write_text(page, encoding="utf-8")
    with pytest.raises(AssertionError, match=re.escape(message)):
        walk(driver, harvest, site)
