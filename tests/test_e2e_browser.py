"""End to end: the real server in headless Chromium. Loads the dashboard, waits for the
comparison, moves the sigma slider with the keyboard, waits for the new figures, and saves the
screenshot docs/images/dashboard.png.

Needs Debian's Chromium and Python playwright (``playwright install`` cannot download here):
    apt-get install -y chromium && pip install playwright
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 120
ANALYSIS_TIMEOUT_MS = 240_000

pytestmark = pytest.mark.e2e


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python playwright not installed (pip install playwright)"
    if shutil.which("streamlit") is None and not _has_module("streamlit"):
        return "streamlit not installed"
    return None


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}: {process.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"streamlit did not answer on {url} within {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def server():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("FVIT_MODELS_DIR", "FVIT_SAMPLES_DIR", "FVIT_ALLOW_DOWNLOAD")}
    env["HF_HUB_OFFLINE"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py", "--server.port", str(port),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_idle(page) -> None:
    """Until the script has finished (no 'Running' status) and every image has loaded."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=ANALYSIS_TIMEOUT_MS)
    page.wait_for_function("Array.from(document.images).every(img => img.complete && img.naturalWidth > 0)",
                           timeout=60_000)


def test_dashboard_compares_and_follows_the_sigma_slider(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1250}, device_scale_factor=1)
            page.goto(server, wait_until="domcontentloaded")
            summary = page.get_by_text("FViT DDS, σ = 0.25,", exact=False)
            expect(summary).to_be_visible(timeout=ANALYSIS_TIMEOUT_MS)
            expect(page.get_by_text("Noise floor (clean vs clean)").first).to_be_visible()
            expect(page.get_by_text("Vanilla ViT", exact=True)).to_be_visible()
            _wait_until_idle(page)
            first_images = page.locator('[data-testid="stImage"] img').evaluate_all("els => els.map(e => e.src)")

            slider = page.locator('[data-testid="stSlider"]').filter(has_text="σ: noise std").get_by_role("slider")
            slider.focus()
            page.keyboard.press("ArrowRight")  # one step: 0.25 -> 0.26
            expect(slider).to_have_value("0.26")
            expect(page.get_by_text("FViT DDS, σ = 0.26,", exact=False)).to_be_visible(timeout=ANALYSIS_TIMEOUT_MS)
            _wait_until_idle(page)
            images = page.locator('[data-testid="stImage"] img').evaluate_all("els => els.map(e => e.src)")
            assert images != first_images  # the figures were redrawn for the new sigma
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.mouse.move(0, 0)  # no hover tooltips in the picture
            page.screenshot(path=str(SCREENSHOT))

            # Export: a figure downloads as a real PNG (generated on click on the server).
            page.get_by_role("link", name="Export").click()
            button = page.get_by_role("button", name="PNG", exact=True)
            expect(button).to_be_visible(timeout=ANALYSIS_TIMEOUT_MS)
            with page.expect_download(timeout=120_000) as download:
                button.click()
            assert Path(download.value.path()).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
            assert download.value.suggested_filename == "compare.png"
        finally:
            browser.close()
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
