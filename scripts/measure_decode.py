"""Worst decode time and peak memory of ``fvit_core.data.images.load_image`` over the fuzz corpus.

Each file is decoded in a forked child (so one decode's memory cannot hide another's): the child
resets its peak RSS (``/proc/self/clear_refs``), decodes the bytes, and reports the wall time, the
rise of its peak RSS above the RSS before decoding (``VmHWM - VmRSS``, Linux only) and the
outcome (size, or the one-line error). A child still running after ``--timeout`` seconds is
killed and reported as such.

Cases: the corpus of ``tests/fuzz_corpus.py`` (small files, every format and failure family),
plus large cases at a pixel limit (``--pixels``, default the dashboard's 16 M): PNG in RGB, RGBA,
L, I;16 and P, progressive JPEG, TIFF, BMP, GIF, WebP, and the progressive-JPEG scan bombs
(one AC scan repeated 20,000 times, and as many scans as the limit allows).

    python scripts/measure_decode.py                  # corpus + large cases at 16 M pixels
    python scripts/measure_decode.py --pixels 40000000 --max-pixels 40000000   # the CLI's limit
    python scripts/measure_decode.py --no-large       # the corpus only (seconds)

Prints one line per large case, then the worst time and the worst peak (absolute and per pixel).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import select
import signal
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fvit_core.data import images  # noqa: E402


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(data: bytes, max_pixels: int, max_bytes: int) -> dict:
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    try:
        pixels = images.load_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
        outcome = f"ok {pixels.shape[2]}x{pixels.shape[1]}"
        n_pixels = pixels.shape[1] * pixels.shape[2]
    except images.ImageError as exc:
        outcome, n_pixels = f"refused: {str(exc)[:120]}", 0
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": _status("VmHWM") - before, "outcome": outcome, "pixels": n_pixels}


def measure(data: bytes, max_pixels: int, max_bytes: int, timeout: float) -> dict:
    """Decode ``data`` in a forked child; its report, or {"outcome": "killed after N s"}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            report = _child(data, max_pixels, max_bytes)
        except BaseException as exc:  # a bug: report it, never hang the parent
            report = {"seconds": math.nan, "peak_bytes": 0, "outcome": f"BUG {type(exc).__name__}: {exc}", "pixels": 0}
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], timeout)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        return {"seconds": timeout, "peak_bytes": 0, "outcome": f"killed after {timeout:g} s", "pixels": 0}
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def large_cases(n_pixels: int) -> dict[str, bytes]:
    """Files of about ``n_pixels`` pixels (square), smooth content (small files, full decode cost)."""
    side = int(math.isqrt(n_pixels))
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1).astype(np.uint8)
    base = Image.fromarray(rgb)
    rgba = Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA")
    cases = {
        "png_rgb": _encode(base, "PNG"),
        "png_rgba": _encode(rgba, "PNG"),
        "png_l": _encode(base.convert("L"), "PNG"),
        "png_i16": _encode(Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "PNG"),
        "png_p": _encode(base.convert("P"), "PNG"),
        "jpeg_progressive": _encode(base, "JPEG", progressive=True, quality=90),
        "tiff_deflate": _encode(base, "TIFF", compression="tiff_adobe_deflate"),
        "bmp": _encode(base, "BMP"),
        "gif": _encode(base.convert("P"), "GIF"),
    }
    if side <= 16383:  # WebP's largest side
        cases["webp_lossless"] = _encode(base, "WEBP", lossless=True)
    from fuzz_corpus import progressive_scan_bomb

    cases["jpeg_scan_bomb_20000"] = progressive_scan_bomb(side, 20_000)
    cases["jpeg_scans_at_limit"] = progressive_scan_bomb(side, images.MAX_JPEG_SCANS - 10)
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=16_000_000, help="size of the large cases (default 16 M)")
    parser.add_argument("--max-pixels", type=int, default=16_000_000, help="decoder pixel limit (dashboard: 16 M)")
    parser.add_argument("--max-bytes", type=int, default=images.DEFAULT_MAX_BYTES)
    parser.add_argument("--timeout", type=float, default=120.0, help="kill a decode after this many seconds")
    parser.add_argument("--no-large", action="store_true", help="only the fuzz corpus")
    ns = parser.parse_args(argv)
    from fuzz_corpus import build_corpus

    results: list[tuple[str, dict]] = []
    t0 = time.perf_counter()
    for case in build_corpus():
        results.append((f"corpus/{case.name}", measure(case.data, ns.max_pixels, ns.max_bytes, ns.timeout)))
    slow = max(results, key=lambda r: r[1]["seconds"])
    big = max(results, key=lambda r: r[1]["peak_bytes"])
    print(f"corpus: {len(results)} files in {time.perf_counter() - t0:.1f} s; slowest {slow[1]['seconds']:.3f} s "
          f"({slow[0]}), largest peak +{big[1]['peak_bytes'] / 1e6:.1f} MB ({big[0]})")
    if not ns.no_large:
        for name, data in large_cases(ns.pixels).items():
            report = measure(data, ns.max_pixels, ns.max_bytes, ns.timeout)
            results.append((f"large/{name}", report))
            per_px = report["peak_bytes"] / report["pixels"] if report["pixels"] else math.nan
            print(f"  {name:22s} {len(data) / 1e6:7.2f} MB  {report['seconds']:7.3f} s  peak +{report['peak_bytes'] / 1e6:7.1f} MB"
                  f"  ({per_px:5.1f} B/px)  {report['outcome']}")
    slowest = max(results, key=lambda r: r[1]["seconds"])
    biggest = max(results, key=lambda r: r[1]["peak_bytes"])
    decoded = [(n, r) for n, r in results if r["pixels"] >= 1_000_000]
    print(f"worst decode time: {slowest[1]['seconds']:.3f} s ({slowest[0]}: {slowest[1]['outcome']})")
    print(f"worst peak memory: +{biggest[1]['peak_bytes'] / 1e6:.1f} MB ({biggest[0]})")
    if decoded:
        name, worst = max(decoded, key=lambda r: r[1]["peak_bytes"] / r[1]["pixels"])
        print(f"worst bytes per pixel (images of >= 1 M pixels): {worst['peak_bytes'] / worst['pixels']:.1f} ({name})")
    bugs = [name for name, r in results if r["outcome"].startswith(("BUG", "killed"))]
    if bugs:
        print("NOT REFUSED OR DECODED:", ", ".join(bugs))
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
