"""The dashboard's resident memory over rounds of browser sessions (issue 26, finding 12).

    python scripts/dashboard_memory.py [ROUNDS]        # needs Chromium and playwright, as the browser test

Starts the server on the shipped pair; each round opens 4 headless-Chromium sessions, waits for
their first analysis, moves sigma once, visits Layers and heads, Distributions, Top-k and Export
and builds the ZIP in each, closes them and reads the server's VmRSS 20 s later; at the end it
waits past Streamlit's disconnected-session TTL (120 s) and reads it again. Prints GB.
"""
import os, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, _free_port, _wait_healthy, _wait_until_idle
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
port = _free_port()
env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
env.pop("FVIT_MODELS_DIR", None)
proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py", "--server.port", str(port),
                         ], cwd=ROOT, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
url = f"http://127.0.0.1:{port}"
def rss():
    return int(open(f"/proc/{proc.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1e6
from playwright.sync_api import sync_playwright, expect
out = []
try:
    _wait_healthy(url, proc)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
            pages = []
            for i in range(4):
                ctx = b.new_context(viewport={"width": 1200, "height": 800})
                page = ctx.new_page(); page.goto(url); pages.append((ctx, page))
            for ctx, page in pages:
                expect(page.get_by_text("FViT DDS, σ = 0.25,", exact=False)).to_be_visible(timeout=240000)
                _wait_until_idle(page)
            # each session moves sigma twice (new results in its LRU)
            for ctx, page in pages:
                page.get_by_role("tab", name="FViT").click()
                s = page.locator('[data-testid="stSlider"]').filter(has_text="σ: noise std").get_by_role("slider")
                s.focus(); page.keyboard.press("ArrowRight"); page.wait_for_timeout(1500); _wait_until_idle(page)
            for ctx, page in pages:
                for label in ("Layers and heads", "Distributions", "Top-k"):
                    page.get_by_role("link", name=label).click(); page.wait_for_timeout(500); _wait_until_idle(page)
                page.get_by_role("link", name="Export").click(); page.wait_for_timeout(500); _wait_until_idle(page)
                page.get_by_role("button", name="Build the ZIP").click(); page.wait_for_timeout(1000); _wait_until_idle(page)
            busy = rss()
            for ctx, page in pages:
                ctx.close()
            time.sleep(20)  # past the disconnected-session TTL
            out.append((rnd, round(busy, 2), round(rss(), 2)))
            print("round", rnd, "busy GB", round(busy, 2), "idle GB", round(rss(), 2), flush=True)
        time.sleep(150)
        print("after 170 s idle GB", round(rss(), 2), flush=True)
        b.close()
finally:
    proc.terminate(); proc.wait()
