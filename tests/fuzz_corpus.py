"""A generated corpus of malformed and unusual image files for the fuzz tests.

Nothing binary is committed: :func:`build_corpus` makes every case from code (seeded, so the
same cases every run) and :func:`write_corpus` writes them into a temporary folder. Each
:class:`CorpusCase` says what the validated decoder (``fvit_core.data.images.load_image``) must do:

- ``ok``: decode to float32 (3, H, W) in [0, 1] of the stated size (after EXIF orientation);
- ``error``: raise ImageError (a ValueError) with one actionable line;
- ``either``: random damage; decoding or an ImageError are both fine, anything else is a bug.

Families (counts in :func:`family_counts`): valid files in every supported format and mode,
1x1 and extreme aspect ratios, every EXIF orientation, header-only decompression bombs in every
format, truncations, seeded byte flips, non-images and unsupported formats named like images,
empty and magic-only files, and odd-but-valid files (trailing data, unknown chunks, wrong
extension).
"""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

Expect = Literal["ok", "error", "either"]
_EPOCH = time.gmtime(1_700_000_000)  # fixed PDF dates keep the bytes reproducible
FORMAT_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff", "GIF": "gif"}


@dataclass(frozen=True)
class CorpusCase:
    """One file: its name (the extension is what an uploader would see), bytes and expectation.

    ``size`` is the expected (H, W) of an ``ok`` case; ``red_corner`` is the corner ("top-left"
    etc.) that must be red after EXIF orientation, for the orientation cases.
    """

    name: str
    data: bytes
    expect: Expect
    family: str
    size: tuple[int, int] | None = None
    red_corner: str | None = None


def encode_image(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# --------------------------------------------------------------------------------------------
# Valid files: formats x modes, sizes, orientation
# --------------------------------------------------------------------------------------------


def _mode_images() -> dict[str, Image.Image]:
    rgb = Image.fromarray(noise_rgb(12, 16, 1))
    grey16 = Image.fromarray((np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300))
    floats = Image.fromarray(np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16))
    rgba = Image.fromarray(np.dstack([noise_rgb(12, 16, 2), np.full((12, 16), 128, np.uint8)]), "RGBA")
    return {
        "RGB": rgb, "RGBA": rgba, "LA": rgba.convert("LA"), "L": rgb.convert("L"), "P": rgb.convert("P"),
        "1": rgb.convert("1"), "CMYK": rgb.convert("CMYK"), "I;16": grey16, "F": floats,
        "I": Image.fromarray(np.arange(12 * 16, dtype=np.int32).reshape(12, 16) * 1000),
        "YCbCr": rgb.convert("YCbCr"),
    }


# Which modes each format can write (Pillow), with extra save options.
_WRITABLE: dict[str, list[tuple[str, dict]]] = {
    "PNG": [("RGB", {}), ("RGBA", {}), ("LA", {}), ("L", {}), ("P", {}), ("1", {}), ("I;16", {}),
            ("P", {"transparency": 0}), ("RGB", {"transparency": (0, 0, 0)}), ("RGB", {"optimize": True})],
    "JPEG": [("RGB", {}), ("L", {}), ("CMYK", {}), ("YCbCr", {}), ("RGB", {"progressive": True}),
             ("RGB", {"quality": 1}), ("RGB", {"subsampling": 2, "quality": 50})],
    "WEBP": [("RGB", {"lossless": True}), ("RGB", {"quality": 10}), ("RGBA", {"lossless": True}),
             ("RGBA", {"quality": 50})],
    "BMP": [("RGB", {}), ("L", {}), ("P", {}), ("1", {}), ("RGBA", {})],
    "TIFF": [("RGB", {}), ("RGBA", {}), ("LA", {}), ("L", {}), ("1", {}), ("CMYK", {}), ("I;16", {}), ("F", {}),
             ("I", {}), ("YCbCr", {}), ("RGB", {"compression": "tiff_lzw"}), ("RGB", {"compression": "tiff_adobe_deflate"}),
             ("RGB", {"compression": "packbits"}), ("RGB", {"compression": "jpeg"}), ("L", {"compression": "group4"} )],
    "GIF": [("P", {}), ("L", {}), ("RGB", {}), ("P", {"transparency": 0}), ("P", {"interlace": True})],
}


def _valid_formats_and_modes() -> list[CorpusCase]:
    images = _mode_images()
    cases = []
    for fmt, variants in _WRITABLE.items():
        for i, (mode, options) in enumerate(variants):
            image = images[mode]
            if options.get("compression") == "group4":
                image = images["1"]
            try:
                data = encode_image(image, fmt, **options)
            except (OSError, KeyError, ValueError):  # a mode or codec this Pillow build cannot write
                continue
            tag = mode.replace(";", "") + ("_" + "_".join(map(str, options)) if options else "")
            cases.append(CorpusCase(f"valid_{fmt.lower()}_{i:02d}_{tag}.{FORMAT_EXT[fmt]}", data, "ok", "valid format x mode",
                                    size=(12, 16)))
    return cases


def _animated() -> list[CorpusCase]:
    frames = [Image.new("RGB", (10, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    cases = []
    for fmt, options in (("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {}), ("TIFF", {})):
        data = encode_image(frames[0], fmt, save_all=True, append_images=frames[1:], **options)
        cases.append(CorpusCase(f"animated_{fmt.lower()}.{FORMAT_EXT[fmt]}", data, "ok", "multi-frame (first frame)",
                                size=(8, 10)))
    return cases


def _sizes() -> list[CorpusCase]:
    cases = []
    for fmt in FORMAT_EXT:
        data = encode_image(Image.new("RGB", (1, 1), (200, 10, 30)), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        cases.append(CorpusCase(f"one_pixel.{FORMAT_EXT[fmt]}", data, "ok", "1x1 and extreme aspect", size=(1, 1)))
    for fmt, (w, h) in [("PNG", (5000, 1)), ("PNG", (1, 5000)), ("JPEG", (4000, 2)), ("GIF", (2, 3000)),
                        ("BMP", (3000, 1)), ("TIFF", (1, 3000)), ("WEBP", (3000, 3)), ("PNG", (16383, 2))]:
        data = encode_image(Image.fromarray(noise_rgb(h, w, 3)), fmt)
        cases.append(CorpusCase(f"aspect_{w}x{h}.{FORMAT_EXT[fmt]}", data, "ok", "1x1 and extreme aspect", size=(h, w)))
    return cases


# EXIF orientation -> where the top-left red block of the stored image ends up when displayed.
_ORIENTED_RED = {1: "top-left", 2: "top-right", 3: "bottom-right", 4: "bottom-left",
                 5: "top-left", 6: "top-right", 7: "bottom-right", 8: "bottom-left"}


def _orientation() -> list[CorpusCase]:
    stored = np.zeros((8, 12, 3), dtype=np.uint8)  # H=8, W=12, a red block top-left, blue elsewhere
    stored[..., 2] = 255
    stored[:4, :4] = (255, 0, 0)
    cases = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        size = (8, 12) if orientation <= 4 else (12, 8)
        for fmt, options in (("JPEG", {"quality": 100, "subsampling": 0}), ("PNG", {}), ("WEBP", {"lossless": True}),
                             ("TIFF", {})):
            data = encode_image(Image.fromarray(stored), fmt, exif=exif.tobytes(), **options)
            cases.append(CorpusCase(f"exif_orientation_{orientation}.{FORMAT_EXT[fmt]}", data, "ok", "EXIF orientation",
                                    size=size, red_corner=_ORIENTED_RED[orientation]))
    for value in (0, 9, 255, 65535):  # out-of-range orientation: ignored, image as stored
        exif = Image.Exif()
        exif[0x0112] = value
        data = encode_image(Image.fromarray(stored), "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
        cases.append(CorpusCase(f"exif_orientation_invalid_{value}.jpg", data, "ok", "EXIF orientation", size=(8, 12),
                                red_corner="top-left"))
    for i, blob in enumerate((b"Exif\x00\x00garbage", b"Exif\x00\x00II*\x00\xff\xff\xff\x7f", b"Exif\x00\x00MM\x00*" + b"\xff" * 40)):
        data = encode_image(Image.fromarray(stored), "JPEG", quality=100, subsampling=0, exif=blob)
        cases.append(CorpusCase(f"exif_corrupt_{i}.jpg", data, "either", "EXIF orientation"))
    return cases


def _float_and_wide_tiffs() -> list[CorpusCase]:
    def tiff(values: np.ndarray) -> bytes:
        return encode_image(Image.fromarray(values.astype(np.float32)), "TIFF")

    base = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    nan, inf, neg = base.copy(), base.copy(), base.copy()
    nan[0, 0], inf[0, 0], neg[0, 0] = np.nan, np.inf, -5.0
    return [
        CorpusCase("float_nan.tiff", tiff(nan), "error", "valid format x mode"),
        CorpusCase("float_inf.tiff", tiff(inf), "error", "valid format x mode"),
        CorpusCase("float_negative.tiff", tiff(neg), "ok", "valid format x mode", size=(3, 4)),
        CorpusCase("float_huge.tiff", tiff(base * 1e30), "ok", "valid format x mode", size=(3, 4)),
        CorpusCase("float_zero.tiff", tiff(base * 0), "ok", "valid format x mode", size=(3, 4)),
        CorpusCase("i16_big_endian.tiff", encode_image(Image.fromarray(np.full((3, 4), 40000, np.uint16)).convert("I;16B"),
                                                   "TIFF"), "ok", "valid format x mode", size=(3, 4)),
        CorpusCase("int32_negative.tiff", encode_image(Image.fromarray(np.full((3, 4), -7, np.int32)), "TIFF"), "ok",
                   "valid format x mode", size=(3, 4)),
        CorpusCase("int32_max.png", encode_image(Image.fromarray(np.full((3, 4), 2**31 - 1, np.int32)), "TIFF"), "ok",
                   "wrong extension", size=(3, 4)),
    ]


# --------------------------------------------------------------------------------------------
# Header-only decompression bombs (no pixel data; a decoder that trusted them would allocate GBs)
# --------------------------------------------------------------------------------------------


def _png_header(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        _png_chunk(b"IEND", b"")


def _gif_header(width: int, height: int) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + descriptor + b"\x02\x02\x44\x01\x00;"


def _bmp_header(width: int, height: int, bpp: int = 24) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + info + b"\x00" * 16


def _tiff_header(width: int, height: int) -> bytes:
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 9 * 12 + 4),
            (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + b"\x00" * 16


def _jpeg_header(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 32 + b"\xff\xd9"


def _webp_header(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 24
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _bombs() -> list[CorpusCase]:
    cases = [
        CorpusCase("bomb_png_100000x100000.png", _png_header(100_000, 100_000), "error", "decompression bomb"),
        CorpusCase("bomb_png_8000x6000.png", _png_header(8000, 6000), "error", "decompression bomb"),
        CorpusCase("bomb_png_16bit_65535x65535.png", _png_header(65535, 65535, 16, 6), "error", "decompression bomb"),
        CorpusCase("bomb_png_2147483647x1.png", _png_header(2**31 - 1, 1), "error", "decompression bomb"),
        CorpusCase("bomb_gif_65535x65535.gif", _gif_header(65535, 65535), "error", "decompression bomb"),
        CorpusCase("bomb_gif_9000x9000.gif", _gif_header(9000, 9000), "error", "decompression bomb"),
        CorpusCase("bomb_bmp_50000x50000.bmp", _bmp_header(50_000, 50_000), "error", "decompression bomb"),
        CorpusCase("bomb_bmp_topdown_50000x50000.bmp", _bmp_header(50_000, -50_000), "error", "decompression bomb"),
        CorpusCase("bomb_tiff_100000x100000.tiff", _tiff_header(100_000, 100_000), "error", "decompression bomb"),
        CorpusCase("bomb_tiff_7000x7000.tiff", _tiff_header(7000, 7000), "error", "decompression bomb"),
        CorpusCase("bomb_jpeg_65500x65500.jpg", _jpeg_header(65500, 65500), "error", "decompression bomb"),
        CorpusCase("bomb_jpeg_9000x9000.jpg", _jpeg_header(9000, 9000), "error", "decompression bomb"),
        CorpusCase("bomb_webp_16384x16384.webp", _webp_header(16384, 16384), "error", "decompression bomb"),
        CorpusCase("bomb_webp_9000x9000.webp", _webp_header(9000, 9000), "error", "decompression bomb"),
        CorpusCase("zero_width.png", _png_header(0, 10), "error", "decompression bomb"),
        CorpusCase("zero_height.gif", _gif_header(10, 0), "error", "decompression bomb"),
    ]
    # A real zlib bomb: 7000 x 7000 black RGB compresses to about 150 kB and would need 147 MB
    # of RGB (590 MB as float32) to decode; the header alone is over the 40M-pixel limit.
    rows = zlib.compress(b"\x00" * (1 + 3 * 7000) * 7000, 9)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 7000, 7000, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b""))
    cases.append(CorpusCase("bomb_png_zlib_7000x7000.png", bomb, "error", "decompression bomb"))
    # A compressed text chunk that inflates to 8 MB (8x the 1 MB limit): Pillow's text-chunk limit must refuse or skip it.
    text = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 8_000_000, 9))
    small = encode_image(Image.new("RGB", (4, 4)), "PNG")
    cases.append(CorpusCase("bomb_png_ztxt.png", small[:33] + text + small[33:], "either", "decompression bomb"))
    iccp = _png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 8_000_000, 9))
    cases.append(CorpusCase("bomb_png_iccp.png", small[:33] + iccp + small[33:], "either", "decompression bomb"))
    # Decode-time bombs: a progressive JPEG whose cost is (scans x blocks). At 4000x4000 one
    # repeated AC scan made libjpeg work for minutes; these are small and refused by scan count.
    cases.append(CorpusCase("bomb_jpeg_scans_1000.jpg", progressive_scan_bomb(64, 1000), "error", "decompression bomb"))
    cases.append(CorpusCase("bomb_jpeg_scans_200_512px.jpg", progressive_scan_bomb(512, 200), "error",
                            "decompression bomb"))
    return cases


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment of a baseline or progressive JPEG; an SOS segment's
    range includes its entropy-coded data (up to the next marker that is not a restart)."""
    segments, i = [(0xD8, 0, 2)], 2
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            segments.append((marker, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xDA:
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        segments.append((marker, i, end))
        i = end
    return segments


def progressive_scan_bomb(side: int, scans: int) -> bytes:
    """A flat grey ``side`` x ``side`` progressive JPEG whose shortest AC scan is repeated until the
    file holds ``scans`` scans: tiny per scan, but each one is a pass over every block."""
    data = encode_image(Image.new("RGB", (side, side), (128, 128, 128)), "JPEG", progressive=True, quality=90)
    segments = jpeg_segments(data)
    sos = [(start, end) for marker, start, end in segments if marker == 0xDA]
    start, end = min(sos[1:], key=lambda se: se[1] - se[0])  # sos[0] is the DC scan
    eoi = segments[-1][1]
    return data[:eoi] + data[start:end] * max(scans - len(sos), 0) + data[eoi:]


# --------------------------------------------------------------------------------------------
# Damage: truncations and byte flips of valid files
# --------------------------------------------------------------------------------------------


def _damage_sources() -> dict[str, bytes]:
    image = Image.fromarray(noise_rgb(40, 48, 4))
    return {fmt: encode_image(image, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {})) for fmt in FORMAT_EXT}


_CUTS = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _truncations() -> list[CorpusCase]:
    cases = []
    for fmt, data in _damage_sources().items():
        for fraction in _CUTS:
            cut = max(1, int(len(data) * fraction))
            # Cut pixel data must never decode silently (LOAD_TRUNCATED_IMAGES stays off); a cut in
            # the last 1% may only lose trailer bytes, which some formats do not need.
            expect: Expect = "either" if fraction == 0.99 else "error"
            cases.append(CorpusCase(f"truncated_{fmt.lower()}_{int(fraction * 100):02d}pct.{FORMAT_EXT[fmt]}",
                                    data[:cut], expect, "truncated"))
        cases.append(CorpusCase(f"truncated_{fmt.lower()}_minus1.{FORMAT_EXT[fmt]}", data[:-1], "either", "truncated"))
    return cases


def _flips(per_format: int = 8, seed: int = 1234) -> list[CorpusCase]:
    rng = np.random.default_rng(seed)
    cases = []
    for fmt, data in _damage_sources().items():
        for i in range(per_format):
            damaged = bytearray(data)
            # Half the cases hit the first 64 bytes (headers), half anywhere.
            span = min(64, len(damaged)) if i % 2 == 0 else len(damaged)
            for _ in range(int(rng.integers(1, 6))):
                damaged[int(rng.integers(0, span))] = int(rng.integers(0, 256))
            cases.append(CorpusCase(f"flipped_{fmt.lower()}_{i}.{FORMAT_EXT[fmt]}", bytes(damaged), "either", "byte flips"))
    return cases


# --------------------------------------------------------------------------------------------
# Not images (or not supported) but named like images
# --------------------------------------------------------------------------------------------


def _zip_bytes() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # a fixed date keeps the bytes reproducible
        archive.writestr(zipfile.ZipInfo("image.png", date_time=(2024, 1, 1, 0, 0, 0)), encode_image(Image.new("RGB", (2, 2)), "PNG"))
    return buffer.getvalue()


def _non_images() -> list[CorpusCase]:
    import gzip

    tiny = Image.new("RGB", (6, 4), (10, 20, 30))
    payloads = {
        "empty.png": b"",
        "one_byte.jpg": b"\xff",
        "text.png": b"hello, this is not an image\n",
        "html.jpg": b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "json.webp": json.dumps({"not": "an image"}).encode(),
        "script.gif": b"#!/bin/sh\nrm -rf /\n",
        "python.bmp": b"import os\nos.system('echo pwned')\n",
        "pdf.tiff": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
        "eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(pwned) print\nshowpage\n",
        "zip.png": _zip_bytes(),
        "gzip.jpg": gzip.compress(encode_image(tiny, "PNG"), mtime=0),
        "elf.jpg": b"\x7fELF\x02\x01\x01" + b"\x00" * 57,
        "pickle.png": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.",
        "nul_bytes.png": b"\x00" * 4096,
        "ff_bytes.jpg": b"\xff" * 4096,
        "utf16.gif": "GIF89a not really".encode("utf-16"),
        "random_16.png": np.random.default_rng(5).bytes(16),
        "random_1k.jpg": np.random.default_rng(6).bytes(1024),
        "random_64k.webp": np.random.default_rng(7).bytes(65536),
        "magic_png.png": b"\x89PNG\r\n\x1a\n",
        "magic_jpeg.jpg": b"\xff\xd8\xff\xe0",
        "magic_gif87.gif": b"GIF87a",
        "magic_gif89.gif": b"GIF89a",
        "magic_bmp.bmp": b"BM",
        "magic_tiff_le.tiff": b"II*\x00",
        "magic_tiff_be.tiff": b"MM\x00*",
        "magic_bigtiff.tiff": b"II+\x00\x08\x00\x00\x00",
        "magic_webp.webp": b"RIFF\x00\x00\x00\x00WEBP",
        "png_ihdr_only.png": b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)),
        "png_bad_depth.png": _png_header(4, 4, bit_depth=3),
        "png_bad_colour.png": _png_header(4, 4, colour=5),
        "tiff_loop_ifd.tiff": b"II*\x00\x08\x00\x00\x00\x01\x00\x00\x01\x04\x00\x01\x00\x00\x00\x04\x00\x00\x00\x08\x00\x00\x00",
        "bmp_zero_bpp.bmp": _bmp_header(4, 4, bpp=0),
        "bmp_bpp_7.bmp": _bmp_header(4, 4, bpp=7),
    }
    # Real images in formats outside the allow-list: refused whatever their extension.
    for fmt, ext in (("PPM", "png"), ("ICO", "jpg"), ("TGA", "bmp"), ("PCX", "gif"), ("DDS", "png"), ("IM", "tiff"),
                     ("SGI", "webp"), ("XBM", "png"), ("QOI", "jpg"), ("MPO", "jpg"), ("PDF", "png"), ("EPS", "jpg")):
        try:
            image = tiny.convert("1") if fmt == "XBM" else tiny
            fixed = {"creationDate": _EPOCH, "modDate": _EPOCH} if fmt == "PDF" else {}
            data = encode_image(image, fmt, **fixed)
        except (OSError, KeyError, ValueError, TypeError):  # a writer missing in this Pillow build
            continue
        expect: Expect = "ok" if fmt == "MPO" else "error"  # MPO is a JPEG with extra frames: decodes as JPEG
        payloads[f"format_{fmt.lower()}.{ext}"] = (data, expect)  # type: ignore[assignment]
    cases = []
    for name, value in payloads.items():
        data, expect = value if isinstance(value, tuple) else (value, "error")
        cases.append(CorpusCase(f"notimage_{name}", data, expect, "not an image / unsupported",
                                size=(4, 6) if expect == "ok" else None))
    return cases


# --------------------------------------------------------------------------------------------
# Odd but valid
# --------------------------------------------------------------------------------------------


def _odd_but_valid() -> list[CorpusCase]:
    image = Image.fromarray(noise_rgb(10, 14, 8))
    png, jpeg, gif = encode_image(image, "PNG"), encode_image(image, "JPEG"), encode_image(image, "GIF")
    private = _png_chunk(b"prVt", b"private data" * 10)
    bad_crc_text = _png_chunk(b"tEXt", b"Comment\x00hello")[:-4] + b"\x00\x00\x00\x00"
    cases = [
        CorpusCase("odd_png_trailing_garbage.png", png + b"GARBAGE" * 100, "ok", "odd but valid", size=(10, 14)),
        CorpusCase("odd_jpeg_trailing_garbage.jpg", jpeg + b"\x00" * 500, "ok", "odd but valid", size=(10, 14)),
        CorpusCase("odd_gif_trailing_garbage.gif", gif + b"junk", "ok", "odd but valid", size=(10, 14)),
        CorpusCase("odd_png_private_chunk.png", png[:33] + private + png[33:], "ok", "odd but valid", size=(10, 14)),
        CorpusCase("odd_png_text_bad_crc.png", png[:33] + bad_crc_text + png[33:], "either", "odd but valid"),
        CorpusCase("odd_png_named_jpg.jpg", png, "ok", "wrong extension", size=(10, 14)),
        CorpusCase("odd_jpeg_named_png.png", jpeg, "ok", "wrong extension", size=(10, 14)),
        CorpusCase("odd_gif_named_webp.webp", gif, "ok", "wrong extension", size=(10, 14)),
        CorpusCase("odd_no_extension", png, "ok", "wrong extension", size=(10, 14)),
        CorpusCase("odd unicode name \u00e9\u6f22.png", png, "ok", "wrong extension", size=(10, 14)),
        CorpusCase("odd_jpeg_with_icc.jpg", encode_image(image, "JPEG", icc_profile=b"\x00" * 128), "ok", "odd but valid",
                   size=(10, 14)),
        CorpusCase("odd_png_dpi_huge.png", encode_image(image, "PNG", dpi=(1e7, 1e7)), "ok", "odd but valid", size=(10, 14)),
        CorpusCase("odd_tiff_big_endian.tiff", _tiff_big_endian(image), "ok", "odd but valid", size=(10, 14)),
    ]
    return cases


def _tiff_big_endian(image: Image.Image) -> bytes:
    """A big-endian uncompressed RGB TIFF written by hand (Pillow writes little-endian)."""
    width, height = image.size
    pixels = np.asarray(image, dtype=np.uint8).tobytes()
    tags = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 2), (273, 4, 0), (277, 3, 3),
            (278, 3, height), (279, 4, len(pixels))]
    # BitsPerSample of 3 samples does not fit in the entry: it points to (8, 8, 8) after the IFD.
    ifd_offset = 8
    ifd_size = 2 + len(tags) * 12 + 4
    bps_offset = ifd_offset + ifd_size
    data_offset = bps_offset + 6
    entries = b""
    for tag, kind, value in tags:
        if tag == 258:
            entries += struct.pack(">HHII", tag, 3, 3, bps_offset)
        elif tag == 273:
            entries += struct.pack(">HHII", tag, 4, 1, data_offset)
        elif kind == 3:
            entries += struct.pack(">HHIHH", tag, 3, 1, value, 0)
        else:
            entries += struct.pack(">HHII", tag, kind, 1, value)
    ifd = struct.pack(">H", len(tags)) + entries + b"\x00\x00\x00\x00"
    return b"MM\x00*" + struct.pack(">I", ifd_offset) + ifd + struct.pack(">HHH", 8, 8, 8) + pixels


# --------------------------------------------------------------------------------------------


def build_corpus() -> list[CorpusCase]:
    """Every case, deterministic. Names are unique."""
    cases = (_valid_formats_and_modes() + _animated() + _sizes() + _orientation() + _float_and_wide_tiffs()
             + _bombs() + _truncations() + _flips() + _non_images() + _odd_but_valid())
    names = [case.name for case in cases]
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, f"duplicate corpus names: {sorted(duplicates)}"
    return cases


def write_corpus(folder: Path) -> list[tuple[CorpusCase, Path]]:
    """Write every case into ``folder``; returns (case, path) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case in build_corpus():
        path = folder / case.name
        path.write_bytes(case.data)
        written.append((case, path))
    return written


def family_counts(cases: list[CorpusCase]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.family] = counts.get(case.family, 0) + 1
    return counts


if __name__ == "__main__":  # python tests/fuzz_corpus.py: print the families and expectations
    corpus = build_corpus()
    print(len(corpus), "cases")
    for family, count in family_counts(corpus).items():
        print(f"  {family}: {count}")
    for expect in ("ok", "error", "either"):
        print(f"  expect {expect}: {sum(case.expect == expect for case in corpus)}")
