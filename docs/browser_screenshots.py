"""Screenshots of a `param-decomp browse` site in headless Chromium, for docs/reading_components.md.

Usage: python docs/browser_screenshots.py SITE_DIR OUT_DIR SITE COMPONENT [SITE COMPONENT ...]
Writes overview.png, the first SITE's table (sorted by density) and one page per component.
Offline: the pages load from file:// only; Selenium Manager is told never to download a driver.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By

from param_decomp.browse.layout import component_path, site_slugs, table_path


def _driver(profile: str) -> webdriver.Chrome:
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1400",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def main(argv: list[str]) -> None:
    site_dir, out = Path(argv[0]).resolve(), Path(argv[1])
    pairs = [(argv[i], int(argv[i + 1])) for i in range(2, len(argv), 2)]
    out.mkdir(parents=True, exist_ok=True)
    sites = [p.name for p in (site_dir / "sites").iterdir()]
    slugs = site_slugs(sorted(sites))
    with tempfile.TemporaryDirectory() as profile:
        driver = _driver(profile)
        try:
            driver.get((site_dir / "index.html").as_uri())
            time.sleep(0.5)
            driver.save_screenshot(str(out / "overview.png"))
            first = pairs[0][0]
            driver.get((site_dir / table_path(slugs[first])).as_uri())
            time.sleep(0.5)
            headers = driver.find_elements(By.CSS_SELECTOR, "th")
            density = [h for h in headers if h.text.strip().lower().startswith("density")]
            if density:
                density[0].click()
                density[0].click()  # descending
            time.sleep(0.3)
            driver.save_screenshot(str(out / f"table_{slugs[first]}.png"))
            for site, comp in pairs:
                driver.get((site_dir / component_path(slugs[site], comp)).as_uri())
                time.sleep(0.5)
                driver.save_screenshot(str(out / f"component_{slugs[site]}_{comp}.png"))
        finally:
            driver.quit()


if __name__ == "__main__":
    main(sys.argv[1:])
