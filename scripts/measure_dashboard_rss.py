"""The dashboard's memory after many uploads in one browser session (Streamlit's AppTest).

Runs the real app (app/streamlit_app.py, shipped pair, quick settings) in this process, uploads
``--uploads`` different images of ``--pixels`` pixels each (RGBA PNGs: the costliest conversion,
and small files, as a hostile user would send) one after the other in the same session, and
prints the process's resident memory (VmRSS) and its peak (VmHWM) after each rerun. What the
session holds is bounded by app/state.DECODED_IMAGES_PER_SESSION; with the old 17-image memo
the red team measured 1.05 GB -> 4.05 GB for 18 uploads of 16 M pixels.

    python scripts/measure_dashboard_rss.py                       # 18 uploads of 16 M pixels
    python scripts/measure_dashboard_rss.py --uploads 6 --pixels 4000000
"""

from __future__ import annotations

import argparse
import gc
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
APP = str(ROOT / "app" / "streamlit_app.py")
QUICK = {"n_samples": 8, "attack.pgd.steps": 2, "bootstrap": 50}


def _status(field: str) -> float:
    """A /proc/self/status field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def rgba_png(side: int, seed: int) -> bytes:
    """A smooth RGBA image (a small file of a large image), different for every seed."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    shift = (seed * 37) % 256
    channels = [(ramp[None, :] + shift) % 256, np.broadcast_to(ramp[:, None], (side, side)),
                255 - ramp[None, :].repeat(side, 0), np.full((side, side), 128 + seed % 100, np.float32)]
    pixels = np.stack(np.broadcast_arrays(*channels), axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=18)
    parser.add_argument("--pixels", type=int, default=16_000_000, help="pixels per upload (dashboard limit: 16 M)")
    ns = parser.parse_args(argv)
    from streamlit.testing.v1 import AppTest

    side = int(math.isqrt(ns.pixels))
    at = AppTest.from_file(APP, default_timeout=600)
    for key, value in QUICK.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    gc.collect()
    start = _status("VmRSS")
    print(f"after the first page (gallery image analysed): RSS {start:.0f} MB")
    for i in range(ns.uploads):
        data = rgba_png(side, i)
        t0 = time.perf_counter()
        at.file_uploader(key="upload").set_value((f"upload_{i}.png", data, "image/png")).run()
        seconds = time.perf_counter() - t0
        problems = [e.value for e in at.exception] + [e.value for e in at.error]
        gc.collect()
        print(f"upload {i + 1:2d} ({side}x{side}, {len(data) / 1e3:.0f} kB): {seconds:5.1f} s, RSS {_status('VmRSS'):6.0f} MB, "
              f"peak {_status('VmHWM'):6.0f} MB{'  ' + '; '.join(map(str, problems)) if problems else ''}")
    decoded = at.session_state["_decoded"] if "_decoded" in at.session_state else {}
    print(f"after {ns.uploads} uploads: RSS {_status('VmRSS'):.0f} MB (+{_status('VmRSS') - start:.0f} MB), "
          f"peak {_status('VmHWM'):.0f} MB; decoded images kept by the session: {len(decoded)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
