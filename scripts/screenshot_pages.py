"""Screenshots of every dashboard page, as a user gets there: upload a photo, choose full LRP
explaining one class, visit each page, run the sigma sweep.

Needs Debian's Chromium and Python playwright (as tests/test_e2e_browser.py). Starts the server as
the README does, on a free port; writes whole-page PNGs (quantised to 256 colours) into OUT:

    python scripts/screenshot_pages.py PHOTO OUT [--class horse]

docs/images/pages/ was made with PHOTO = DAVIS-2016 480p horsejump-high/00000.jpg (CC BY 4.0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_e2e_browser import (  # noqa: E402 - the browser test's helpers: one way to drive the page
    CHROMIUM, CHROMIUM_ARGS, _free_port, _wait_healthy, _wait_until_idle)

WIDTH, TIMEOUT_MS = 1440, 240_000


def _shot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main container, so the window is made as tall
    as the page first."""
    from PIL import Image

    _wait_until_idle(page)
    height = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll('[data-testid=stMain] *'))"
                           ".slice(0, 50).map(e => e.scrollHeight))")
    page.set_viewport_size({"width": WIDTH, "height": min(max(1000, int(height) + 40), 4000)})
    page.wait_for_timeout(1500)
    _wait_until_idle(page)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": WIDTH, "height": 1000})
    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)
    print("wrote", path, flush=True)


def _go(page, label: str) -> None:
    page.get_by_role("link", name=label).click()
    page.wait_for_timeout(500)
    _wait_until_idle(page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--class", dest="target", default="horse", help="the class LRP explains (a class name)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import expect, sync_playwright

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = (args.out / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py", "--server.port",
                               str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": WIDTH, "height": 1000}).new_page()
            page.goto(f"http://127.0.0.1:{port}")
            expect(page.get_by_text("FViT DDS, σ = 0.25,", exact=False)).to_be_visible(timeout=TIMEOUT_MS)
            page.get_by_role("tab", name="Image").click()
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(args.photo))
            expect(page.get_by_text(args.photo.name, exact=False).first).to_be_visible(timeout=TIMEOUT_MS)
            _shot(page, args.out / "compare.png")
            page.get_by_role("tab", name="Explanation").click()
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Method").first.click()
            page.get_by_role("option", name="full LRP", exact=True).click()
            _wait_until_idle(page)
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Explain class").first.click()
            page.get_by_role("option", name=f"{args.target} (", exact=False).first.click()
            _wait_until_idle(page)
            _shot(page, args.out / f"compare_lrp_{args.target}.png")
            for label, name in (("Distributions", "distributions"), ("Top-k", "topk"), ("Layers and heads", "layers")):
                _go(page, label)
                _shot(page, args.out / f"{name}.png")
            _go(page, "Sigma sweep")
            page.get_by_role("button", name="Run sweep").click()
            page.wait_for_timeout(1000)
            _shot(page, args.out / "sigma_sweep.png")
            _go(page, "Export")
            _shot(page, args.out / "export.png")
            browser.close()
    finally:
        server.terminate()
        server.wait()
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
