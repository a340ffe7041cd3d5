"""The one validated image decoder: bytes / files / PIL images -> float32 (3, H, W) in [0, 1].

Untrusted uploads go through :func:`load_image`, which rejects oversized inputs *before*
decoding (byte count, then the pixel count read from the header), restricts Pillow to six
formats, applies the EXIF orientation and converts every mode to RGB with the right scale
(16-bit grey keeps its 16 bits; transparency is composited over white). Any failure is an
:class:`ImageError` (an :class:`~fvit_core.errors.InputError`) with one actionable line.

:func:`prepare_image` fits an image to a model's input size (docs/METHOD.md, section 2: pixels
in [0, 1], bicubic antialiased resizing), :func:`image_digest` keys caches.

Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here (truncated files must fail),
and DecompressionBombWarning is raised as an error while decoding.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from fvit_core.data.pixels import check_pixels, resize_pixels
from fvit_core.errors import InputError, SettingError

# The one list of image formats: Pillow's name -> (the name shown to users, the file suffixes).
# The decoder opens only these; labelled folders, training folders and the dashboard's gallery
# list files by these suffixes.
IMAGE_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "PNG": ("PNG", (".png",)), "JPEG": ("JPEG", (".jpg", ".jpeg")), "WEBP": ("WebP", (".webp",)),
    "BMP": ("BMP", (".bmp",)), "TIFF": ("TIFF", (".tif", ".tiff")), "GIF": ("GIF", (".gif",)),
}
SUPPORTED_FORMATS: tuple[str, ...] = tuple(IMAGE_FORMATS)
IMAGE_SUFFIXES: frozenset[str] = frozenset(s for _, suffixes in IMAGE_FORMATS.values() for s in suffixes)
_SUPPORTED_TEXT = ", ".join(label for label, _ in IMAGE_FORMATS.values())
DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_MAX_PIXELS = 40_000_000
# Wall-clock budget of one decode: a 40-megapixel file decodes in about 7 s on one idle core.
DEFAULT_MAX_SECONDS = 30.0

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | Image.Image
PrepareMode = Literal["resize", "center_crop", "pad"]
PREPARE_MODES: tuple[str, ...] = ("resize", "center_crop", "pad")
DEFAULT_PREPARE_MODE: PrepareMode = "resize"  # the whole image, stretched to the model's shape
PAD_VALUE = 0.0  # letterbox bars are black, as in video letterboxing


class ImageError(InputError):
    """An input is not a usable image; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(
    source: ImageSource,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> np.ndarray:
    """Decode an image into float32 pixels of shape (3, H, W) in [0, 1].

    Args:
        source: encoded bytes, a file path, or an already opened PIL image.
        max_bytes: reject larger encoded inputs before reading them (not for PIL images).
        max_pixels: reject images with more than this many pixels (W * H), checked from the
            header before any pixel is decoded. Pillow's own bomb limit (2 * MAX_IMAGE_PIXELS)
            still applies above it.
        max_seconds: stop a decode that runs longer than this (wall clock; None: no limit). The
            decoder is fed 64 kB at a time and the clock is checked before each piece, so a
            decode stops within one piece of the limit (not for PIL images, already decoded).

    Formats: PNG, JPEG, WebP, BMP, TIFF, GIF (first frame). EXIF orientation is applied. Modes:
    RGBA / LA / P with transparency are composited over white; I;16 is scaled by 1/65535; I by
    its bit depth (<= 255: 8-bit, <= 65535: 16-bit, else by its maximum); F is kept if its
    maximum is <= 1, else divided by its maximum; CMYK, 1, L, P and others convert to RGB.

    Cost (docs/DEPLOY.md has the measured numbers): the conversion works in bands of rows, so
    memory is the decoded image (at most 4 bytes per pixel for 8-bit files, as Pillow stores
    them) plus the float32 result (12 bytes per pixel), plus the decoder's own buffers; time is
    bounded by the pixel limit, by :data:`MAX_JPEG_SCANS` (a progressive JPEG's cost is
    scans x blocks) and by ``max_seconds``. Warnings of the decoders (Pillow, libtiff) never
    reach the terminal: one that says the file is cut short makes the error say "truncated".

    Raises:
        ImageError: empty, oversized, truncated, corrupted or unsupported input, or a decode
            that took too long.
    """
    if isinstance(source, Image.Image):
        _check_pixel_count(source.size, max_pixels)
        return _decode_opened(source, source.format or "image", owned=False)
    data = _read_bytes(source, max_bytes)
    with warnings.catch_warnings(record=True) as caught:
        # Decoder warnings are recorded, never printed (a CLI error must stay one line); a bomb
        # warning means the header promises a huge image: refuse it, never decode it.
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode_bytes(data, max_pixels, max_seconds)
        except ImageError as exc:
            raise _name_truncation(exc, data, [str(w.message) for w in caught]) from exc.__cause__


def _read_bytes(source: ImageSource, max_bytes: int) -> bytes:
    """The encoded bytes of ``source``, refusing files over ``max_bytes`` before reading them."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(Path(source), max_bytes)
    else:
        raise ImageError(f"cannot read an image from a {type(source).__name__}; pass bytes, a file path or a PIL image")
    if not data:
        raise ImageError("empty file (0 bytes): upload an image file (supported: " + _SUPPORTED_TEXT + ")")
    if len(data) > max_bytes:
        raise ImageError(f"file is {len(data):,} bytes, over the limit of {max_bytes:,} bytes; compress or downscale it")
    return data


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageError(f"{path} is not a file")
        if size > max_bytes:
            raise ImageError(f"{path.name} is {size:,} bytes, over the limit of {max_bytes:,} bytes; compress or downscale it")
        with path.open("rb") as handle:
            return handle.read(max_bytes + 1)  # +1: a file that grew since stat() still fails the limit
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _clock() -> float:
    """Seconds on a monotonic clock (the decode budget's; a test replaces it)."""
    return time.monotonic()


class DecodeTimeout(Exception):
    """Raised inside Pillow's read loop when a decode is over its time budget (not an OSError, so
    Pillow's truncation handling cannot swallow it)."""


class _BudgetedBytes(io.BytesIO):
    """The encoded bytes as Pillow reads them, checking a deadline before each read.

    Pillow's decoders are fed in pieces (ImageFile.load reads 64 kB at a time and decodes each),
    so a decoder that loops on crafted data is stopped at its next read, in this thread: nothing
    keeps running after the error.
    """

    def __init__(self, data: bytes, max_seconds: float | None):
        super().__init__(data)
        self.max_seconds = max_seconds
        self.deadline = None if max_seconds is None else _clock() + max_seconds

    def read(self, size: int | None = -1) -> bytes:
        self.check()
        return super().read(size)

    def check(self) -> None:
        if self.deadline is not None and _clock() > self.deadline:
            raise DecodeTimeout(self.max_seconds)


def _decode_bytes(data: bytes, max_pixels: int, max_seconds: float | None) -> np.ndarray:
    stream = _BudgetedBytes(data, max_seconds)
    try:
        if data[:4] in _TIFF_PREFIXES:
            # Before Image.open: for an uncompressed TIFF Pillow builds one tile per strip while it
            # opens the file, so millions of strips cost seconds and hundreds of MB already there.
            _check_tiff_chunks(data, max_pixels, max_seconds)
        with Image.open(stream, formats=SUPPORTED_FORMATS) as image:
            _check_pixel_count(image.size, max_pixels)
            # By decoder, not by format name: a JPEG with an APP2 "MPF" segment opens as an
            # MpoImageFile (format "MPO", a JpegImageFile subclass) and is decoded by libjpeg too.
            if isinstance(image, JpegImagePlugin.JpegImageFile):
                _check_jpeg_scans(data, frames=getattr(image, "n_frames", 1))
            return _decode_opened(image, image.format or "image", owned=True, budget=stream)
    except DecodeTimeout as exc:
        raise ImageError(f"decoding took longer than {max_seconds:g} s and was stopped: the file is built to make "
                         "the decoder loop, or is too large for this server; re-export it") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image header claims too many pixels (decompression bomb): {exc}") from exc
    except UnidentifiedImageError as exc:
        fmt = _format_from_magic(data)
        if fmt is not None:  # a supported format whose header Pillow could not parse: damaged or cut short
            raise ImageError(f"corrupted or truncated {fmt} file (its header could not be read), re-export or "
                             "re-download it") from exc
        raise ImageError(f"not a readable image (supported: {_SUPPORTED_TEXT}): cannot identify image file") from exc
    except ImageError:
        raise
    except Exception as exc:  # a plugin failing while parsing the header
        raise ImageError(f"not a readable image (supported: {_SUPPORTED_TEXT}): {_first_line(exc)}") from exc


# A progressive JPEG is decoded scan by scan, each scan a pass over every 8x8 block: a file that
# repeats one tiny scan thousands of times costs minutes (600,000 scans of 31 bytes kept libjpeg
# busy for over 10 minutes on a 16-megapixel image). Encoders write about 10 scans (libjpeg's
# progressive script for colour; mozjpeg's optimised scripts stay under 70); 100 bounds the work
# at 100 passes, under 0.2 s at 16 megapixels (scripts/measure_decode.py).
MAX_JPEG_SCANS = 100


def _check_jpeg_scans(data: bytes, *, frames: int = 1) -> None:
    """Refuse a JPEG with more than MAX_JPEG_SCANS start-of-scan markers, before decoding.

    Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so
    every FF DA pair is a real start of scan, or one inside metadata (an EXIF thumbnail): the
    count is exact or an over-count, and costs one pass over the bytes.

    The count covers the whole file, so an MPO (``frames`` > 1: a JPEG whose APP2 "MPF" segment
    lists further JPEG images appended to it, as stereo cameras write) is refused when all its
    images together have more than MAX_JPEG_SCANS scans, whichever of them is progressive: only
    the first is decoded here, but any may be by the next reader, and a camera's MPO holds a few
    baseline images of one scan each.
    """
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        what = "JPEG file" if frames <= 1 else f"MPO file (a JPEG holding {frames:,} images)"
        raise ImageError(f"{what} has {scans:,} scans, over the limit of {MAX_JPEG_SCANS} (a progressive JPEG from "
                         "a camera or an editor has about 10): such a file makes the decoder work for minutes; "
                         "re-export it")


# A TIFF is decoded strip by strip (or tile by tile), and each one costs a fixed setup in libtiff
# (and, uncompressed, one Pillow tile object and decoder) whatever its size: 4.8 million 1-pixel
# JPEG strips pointing at the same 300 bytes (a 19 MB file, 4.8 megapixels, under every other
# limit) decoded for about 100 s in the report (6.8 s on the 2-core development machine),
# and libtiff is handed the whole file at once, so the per-read time budget cannot stop it. (A
# progressive JPEG strip is libtiff's to bound: it stops at 100 scans per strip.) Ordinary
# writers make far fewer: libtiff's ~8 kB strips give about 15,000 at 40 megapixels, Pillow's
# ~64 kB strips under 2,000, one row per strip of a 6324x6324 image 6,324 (x3 planes: 19,000),
# 256x256 tiles 610, even the smallest 16x16 tiles 156,000. So at most 2**18 = 262,144, the
# "few hundred thousand" that the smallest tiles can reach: at the limit a 1-pixel-strip file
# decodes in 0.4 s (JPEG) to 1.7 s (uncompressed) here, 6.6 s at the report's 21 us per strip.
MAX_TIFF_CHUNKS = 1 << 18
# Fixed decode cost of one strip or tile, rounded up from the slowest measured: 2-6 us here
# (1-pixel JPEG, YCbCr, deflate, LZW, packbits and uncompressed strips), 21 us on the machine of
# the bomb's report. A file whose strips alone would take longer than ``max_seconds`` at this
# cost is refused (this binds only for budgets under 6.6 s; the default ones are 30 and 15 s).
TIFF_CHUNK_SECONDS = 25e-6
# Pillow's TIFF signatures (TiffImagePlugin.PREFIXES): classic and BigTIFF, both byte orders.
_TIFF_PREFIXES = frozenset({b"MM\x00*", b"II*\x00", b"MM*\x00", b"II\x00*", b"MM\x00+", b"II+\x00"})
_TIFF_STRIP_TAGS = (273, 279)  # StripOffsets, StripByteCounts
_TIFF_TILE_TAGS = (324, 325)  # TileOffsets, TileByteCounts
_TIFF_SCALAR_TAGS = {256: "width", 257: "length", 277: "samples", 278: "rows_per_strip", 284: "planar",
                     322: "tile_width", 323: "tile_length"}
_TIFF_INLINE = {1: "B", 3: "H", 4: "L", 16: "Q"}  # BYTE, SHORT, LONG, LONG8: how a scalar is stored


def _check_tiff_chunks(data: bytes, max_pixels: int, max_seconds: float | None) -> None:
    """Refuse a TIFF whose first image has more strips or tiles than MAX_TIFF_CHUNKS, or more than
    ``max_seconds`` allows at TIFF_CHUNK_SECONDS each, from its first IFD, before Pillow opens it.

    Only the first image directory is read (Pillow and libtiff decode only the first frame here;
    further pages are never opened), entry by entry (12 bytes, 20 for BigTIFF): the number of
    strips is the count field of StripOffsets / StripByteCounts (TileOffsets / TileByteCounts),
    not their arrays, so the check costs microseconds whatever the count. libtiff pads a short
    StripOffsets array with zeros to the number the geometry implies (ImageLength / RowsPerStrip,
    or the tile grid, times the planes when PlanarConfiguration is 2), so that number counts too,
    when the image is within ``max_pixels`` (a larger one is refused by the pixel check, in its
    own words). A directory that cannot be read is left to Pillow, which refuses it.
    """
    chunks, tiled = 0, False
    for counts, values in _tiff_first_ifds(data):
        found, is_tiled = _tiff_chunk_count(counts, values, max_pixels)
        if found > chunks:
            chunks, tiled = found, is_tiled
    limit, why = MAX_TIFF_CHUNKS, "an ordinary TIFF has at most a few thousand"
    if max_seconds is not None and max_seconds / TIFF_CHUNK_SECONDS < limit:
        limit = int(max_seconds / TIFF_CHUNK_SECONDS)
        why = f"the most that decode within the {max_seconds:g} s budget"
    if chunks > limit:
        kind = "tiles" if tiled else "strips"
        raise ImageError(f"TIFF file has {chunks:,} {kind}, over the limit of {limit:,} ({why}): each is decoded on "
                         f"its own, so such a file keeps the decoder busy for minutes; re-save it with fewer, larger "
                         f"{kind}, or as PNG")


def _tiff_chunk_count(counts: dict[int, int], values: dict[str, int], max_pixels: int) -> tuple[int, bool]:
    """(strips or tiles a decoder would visit, whether they are tiles) of one image directory: the
    largest array count, or the geometry's count when larger (and the image within max_pixels)."""
    tiled = any(tag in counts for tag in _TIFF_TILE_TAGS) or "tile_width" in values
    chunks = max(counts.values(), default=0)
    width, length = values.get("width", 0), values.get("length", 0)
    if 1 <= width and 1 <= length and width * length <= max_pixels:
        planes = max(1, values.get("samples", 1)) if values.get("planar", 1) == 2 else 1
        if tiled and values.get("tile_width", 0) >= 1 and values.get("tile_length", 0) >= 1:
            grid = math.ceil(width / values["tile_width"]) * math.ceil(length / values["tile_length"])
        else:
            rows = values.get("rows_per_strip", 0)
            grid = math.ceil(length / rows) if rows >= 1 else 1  # absent or 0: one strip (libtiff's default)
        chunks = max(chunks, grid * planes)
    return chunks, tiled


def _tiff_first_ifds(data: bytes) -> list[tuple[dict[int, int], dict[str, int]]]:
    """The first image directory of a TIFF as each reader of it finds it: (count field of each
    strip/tile array tag, first value of each geometry tag); empty when none can be read.

    Pillow takes a file for BigTIFF when its third byte is 43, libtiff when its version number
    (in the file's byte order) is 43, and Pillow hands libtiff the directory offset it found: a
    big-endian BigTIFF header (MM 00 2B) is read one way by Pillow and another by libtiff, so
    every (offset, layout) a reader may use is checked (for any ordinary file they are one).
    """
    endian = {b"II": "<", b"MM": ">"}.get(data[:2])
    if endian is None or len(data) < 8:
        return []
    pillow_big = data[2] == 43
    libtiff_big = struct.unpack_from(endian + "H", data, 2)[0] == 43
    offsets = {}
    for big in {pillow_big, libtiff_big}:
        if len(data) >= (16 if big else 8):
            offsets[big] = struct.unpack_from(endian + ("Q" if big else "L"), data, 8 if big else 4)[0]
    layouts = {(offsets[big], big) for big in offsets}
    if pillow_big in offsets:
        layouts.add((offsets[pillow_big], libtiff_big))
    return [ifd for offset, big in sorted(layouts) if (ifd := _tiff_ifd(data, endian, offset, big)) is not None]


def _tiff_ifd(data: bytes, endian: str, offset: int, big: bool) -> tuple[dict[int, int], dict[str, int]] | None:
    """The entries of the image directory at ``offset`` (see :func:`_tiff_first_ifds`); None when
    it starts past the end. Like Pillow, the first entry of a repeated tag gives its value; every
    entry of a strip or tile tag counts (the largest), so a repeated tag cannot hide a count."""
    count_fmt, entry_fmt, inline = (endian + "Q", endian + "HHQ8s", 8) if big else (endian + "H", endian + "HHL4s", 4)
    try:
        (entries,) = struct.unpack_from(count_fmt, data, offset)
    except struct.error:  # directory offset past the end: Pillow refuses the file
        return None
    start, size = offset + struct.calcsize(count_fmt), struct.calcsize(entry_fmt)
    entries = min(entries, max(0, (len(data) - start) // size))  # a count past the end reads what is there
    counts: dict[int, int] = {}
    values: dict[str, int] = {}
    for tag, kind, count, value in struct.iter_unpack(entry_fmt, data[start:start + entries * size]):
        if tag in _TIFF_STRIP_TAGS or tag in _TIFF_TILE_TAGS:
            counts[tag] = max(count, counts.get(tag, 0))
        elif tag in _TIFF_SCALAR_TAGS and _TIFF_SCALAR_TAGS[tag] not in values and kind in _TIFF_INLINE and count >= 1:
            code = endian + _TIFF_INLINE[kind]
            if struct.calcsize(code) <= inline:  # stored in the entry itself (a LONG8 only in BigTIFF)
                values[_TIFF_SCALAR_TAGS[tag]] = struct.unpack_from(code, value)[0]
    return counts, values


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
)


def _format_from_magic(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with (None: none of them)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


_SHORT_READ = ("truncated", "only got", "premature end", "unexpected end", "not enough data", "ended early",
               "bytes not processed")


def _name_truncation(exc: ImageError, data: bytes, warned: list[str]) -> ImageError:
    """Say "truncated" when the decoder's own words (its error or a warning) say the data ended
    early; otherwise the error as it is."""
    text = str(exc)
    if not (text.startswith("corrupted or truncated") or text.startswith("not a readable image")):
        return exc
    said = " ".join([text, *warned]).lower()
    fmt = _format_from_magic(data)
    # A WebP file states its length in its RIFF header; libwebp only says it cannot decode.
    riff_short = fmt == "WebP" and len(data) >= 8 and int.from_bytes(data[4:8], "little") + 8 > len(data)
    if fmt is None or not (riff_short or any(word in said for word in _SHORT_READ)):
        return exc
    detail = (f"its header announces {int.from_bytes(data[4:8], 'little') + 8:,}" if riff_short
              else text.split(": ", 1)[1] if ": " in text and text.startswith("corrupted") else "its data ends early")
    return ImageError(f"truncated {fmt} file ({len(data):,} bytes; {detail}), re-export or re-download it")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; downscale it first"
        )


def _decode_opened(image: Image.Image, label: str, *, owned: bool, budget: _BudgetedBytes | None = None) -> np.ndarray:
    """Decode the first frame of an opened image, orient it and convert it to (3, H, W) floats.

    ``owned``: the image is ours to modify (orientation applied in place, so no second copy of
    the decoded pixels is kept); a caller's PIL image is left as it was.
    """
    try:
        image.load()
        if budget is not None:
            budget.check()
        if owned:
            ImageOps.exif_transpose(image, in_place=True)
        elif image.getexif().get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (ImageError, DecodeTimeout):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib/struct errors
        raise ImageError(f"corrupted or truncated {label} file, re-export or re-download it: {_first_line(exc)}") from exc


# --------------------------------------------------------------------------------------------
# Mode conversion: (3, H, W) float32 in [0, 1], written band by band
# --------------------------------------------------------------------------------------------

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Rows per band: about 260,000 pixels, so the temporaries of a band (float32 copies, the
# band converted to RGB or RGBA) stay near 10 MB whatever the image size.
_BAND_PIXELS = 1 << 18


def _to_rgb(image: Image.Image) -> np.ndarray:
    """The (3, H, W) float32 pixels of a decoded image, converted band by band.

    Each band goes through the same operations the whole image would (convert, scale, composite),
    so the numbers do not depend on the band size; only the global scale of I and F images needs
    a first pass over the bands (their maximum).
    """
    width, height = image.size
    mode = image.mode
    # A tRNS colour key (info["transparency"]) only matters for 8-bit modes; 16-bit grey keeps its scale.
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        convert = _composite_over_white
    elif mode.startswith("I;16"):
        convert = lambda band: _grey(np.asarray(band).astype(np.float32) / 65535.0)  # noqa: E731
    elif mode == "I":
        scale = _integer_scale(_peak(image))
        convert = lambda band: _grey(np.clip(np.asarray(band).astype(np.float32), 0.0, None) / scale)  # noqa: E731
    elif mode == "F":
        peak = _peak(image, finite=True)
        convert = lambda band: _grey(_scale_float(np.asarray(band), peak))  # noqa: E731
    elif mode in ("1", "L"):
        convert = lambda band: _grey(np.asarray(band.convert("L"), dtype=np.float32) / 255.0)  # noqa: E731
    else:  # RGB, CMYK, YCbCr, P, ...
        convert = lambda band: np.asarray(band.convert("RGB"), dtype=np.float32) / 255.0  # noqa: E731
    out = np.empty((3, height, width), dtype=np.float32)
    for top, bottom in _bands(width, height):
        out[:, top:bottom] = convert(image.crop((0, top, width, bottom))).transpose(2, 0, 1)
    return out


def _bands(width: int, height: int) -> list[tuple[int, int]]:
    rows = max(1, _BAND_PIXELS // max(width, 1))
    return [(top, min(top + rows, height)) for top in range(0, height, rows)]


def _peak(image: Image.Image, *, finite: bool = False) -> float:
    """The largest value of a one-band I or F image (band by band); NaN/infinity refused."""
    width, height = image.size
    peak = -np.inf
    for top, bottom in _bands(width, height):
        values = np.asarray(image.crop((0, top, width, bottom)))
        if finite and not np.isfinite(values).all():
            raise ImageError("floating-point image holds NaN or infinite values; save it as 8- or 16-bit")
        if values.size:
            peak = max(peak, float(values.astype(np.float32).max()))
    return float(peak)


def _composite_over_white(image: Image.Image) -> np.ndarray:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)


def _grey(values: np.ndarray) -> np.ndarray:
    values = np.clip(values.astype(np.float32), 0.0, 1.0)
    return np.repeat(values[..., None], 3, axis=-1)


def _integer_scale(peak: float) -> float:
    """32-bit integer grey: infer the bit depth from the range (8, 16, else by the maximum)."""
    return 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak


def _scale_float(values: np.ndarray, peak: float) -> np.ndarray:
    """Float grey: taken as [0, 1] when its maximum is <= 1, else divided by its maximum."""
    values = values.astype(np.float32)
    return (values / peak if peak > 1.0 else values).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Preparing for a model, digests, export
# --------------------------------------------------------------------------------------------


def center_crop_box(height: int, width: int, target: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of the largest centred crop with the target's aspect."""
    target_h, target_w = target
    if width * target_h > height * target_w:  # wider than the target: keep the full height
        crop_h, crop_w = height, min(width, max(1, round(height * target_w / target_h)))
    else:
        crop_h, crop_w = min(height, max(1, round(width * target_h / target_w))), width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def pad_box(height: int, width: int, target: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, padded_height, padded_width): the smallest canvas with the target's aspect
    that holds the whole image, and where the image sits in it (centred)."""
    target_h, target_w = target
    if width * target_h > height * target_w:  # wider than the target: bars above and below
        padded_h, padded_w = max(height, round(width * target_h / target_w)), width
    else:
        padded_h, padded_w = height, max(width, round(height * target_w / target_h))
    return (padded_h - height) // 2, (padded_w - width) // 2, padded_h, padded_w


def input_region(height: int, width: int, target: tuple[int, int], mode: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the region of an image (``height`` x ``width`` px) that the
    model's input of shape ``target`` shows, in the image's pixel coordinates: the whole image for
    ``resize``, the crop for ``center_crop``, the letterbox canvas for ``pad`` (which extends past
    the image: negative top or left). A map over the model's input lies over this region."""
    if mode == "center_crop":
        return center_crop_box(height, width, target)
    if mode == "pad":
        top, left, padded_h, padded_w = pad_box(height, width, target)
        return -top, -left, padded_h, padded_w
    if mode != "resize":
        raise SettingError(f"mode must be one of {', '.join(PREPARE_MODES)}, got {mode!r}")
    return 0, 0, height, width


def prepare_image(image: np.ndarray, size: tuple[int, int], *, mode: PrepareMode = DEFAULT_PREPARE_MODE,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Fit pixels (3, H, W) in [0, 1] to ``size`` = (h, w): returns float32 (3, h, w) in [0, 1].

    ``resize`` keeps the whole image (aspect ratio not kept); ``center_crop`` first crops the
    largest centred region with the target aspect ratio; ``pad`` (letterbox) first centres the
    whole image on a black canvas with the target aspect ratio, so nothing is cut or distorted.
    Resizing is bicubic with antialiasing (data.pixels.resize_pixels), clamped to [0, 1].

    The letterbox canvas is float32 (12 bytes per pixel) and can be far larger than the image
    (a 16383x1 image pads to 16383x16383 for a square model: 3.2 GB): it is checked against
    ``max_pixels`` (the decoder's pixel limit, so it never exceeds the largest image that
    :func:`load_image` accepts) before it is allocated.

    Raises:
        ImageError: ``pad`` would need a canvas of more than ``max_pixels`` pixels.
    """
    check_pixels(image, batched=False, what="image")
    if not isinstance(size, (tuple, list)) or len(size) != 2 or any(
            isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) or not np.isfinite(s)
            or int(s) != s or s < 1 for s in size):
        raise SettingError(f"size must be two positive integers (height, width), got {size!r}")
    target = (int(size[0]), int(size[1]))
    if mode == "center_crop":
        top, left, crop_h, crop_w = center_crop_box(image.shape[1], image.shape[2], target)
        image = image[:, top:top + crop_h, left:left + crop_w]
    elif mode == "pad":
        top, left, padded_h, padded_w = pad_box(image.shape[1], image.shape[2], target)
        _check_pad_canvas(image.shape[1:], (padded_h, padded_w), max_pixels)
        canvas = np.full((image.shape[0], padded_h, padded_w), PAD_VALUE, dtype=np.float32)
        canvas[:, top:top + image.shape[1], left:left + image.shape[2]] = image
        # The canvas is ours: resized as it is (a second float32 copy would double the peak).
        return resize_pixels(torch.from_numpy(canvas)[None], target)[0].numpy()
    elif mode != "resize":
        raise SettingError(f"mode must be one of {', '.join(PREPARE_MODES)}, got {mode!r}")
    pixels = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))[None]
    return resize_pixels(pixels, target)[0].numpy()


def _check_pad_canvas(image_size: tuple[int, int], padded: tuple[int, int], max_pixels: int) -> None:
    """Refuse a letterbox canvas (padded_h, padded_w) of more than ``max_pixels`` pixels, before
    allocating it; ``image_size`` (H, W) is the image it would hold (for the message)."""
    (height, width), (padded_h, padded_w) = image_size, padded
    if padded_h * padded_w > max_pixels:
        raise ImageError(
            f"image mode pad would letterbox this {width}x{height} image on a {padded_w}x{padded_h} canvas = "
            f"{padded_h * padded_w:,} pixels, over the limit of {max_pixels:,}; use image mode resize or "
            "center_crop (--image-mode in the CLI), or crop the image to a less extreme shape first")


def image_digest(image: np.ndarray) -> str:
    """A cache key: first 16 hex digits of sha256(shape, float32 bytes)."""
    pixels = np.ascontiguousarray(image, dtype=np.float32)
    hasher = hashlib.sha256(np.asarray(pixels.shape, dtype=np.int64).tobytes())
    hasher.update(memoryview(pixels).cast("B"))  # no copy of the pixels (tobytes would make one)
    return hasher.hexdigest()[:16]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Pixels (3, H, W) in [0, 1] -> uint8 (H, W, 3), rounded to the nearest level."""
    check_pixels(image, batched=False, what="image", tolerance=np.inf)  # clipped below
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0).copy()


# An upload shrunk by more than this (per side) to reach the model's input loses most of its detail.
RESIZE_NOTICE_FACTOR = 4.0
ASPECT_TOLERANCE = 0.02  # relative difference of aspect ratios still called "the same shape"


def fit_notice(image_size: tuple[int, int], input_size: tuple[int, int], mode: str) -> str | None:
    """A warning when fitting an image (H, W) to the model's input (H, W) changes it a lot: shrunk
    by more than :data:`RESIZE_NOTICE_FACTOR`, or of another shape than the input (then what the
    chosen mode does to it). None when neither applies."""
    (h, w), (th, tw) = image_size, input_size
    notes = []
    factor = max(h / th, w / tw)
    if factor > RESIZE_NOTICE_FACTOR:
        notes.append(f"shrunk about {factor:.0f}× ({w}×{h} → {tw}×{th} px): the model sees far less detail than the file has")
    aspect, target = w / h, tw / th
    if abs(aspect / target - 1.0) > ASPECT_TOLERANCE:
        shape = f"{w}×{h}, not {'square' if tw == th else f'{tw}:{th} like the model'}"
        effect = {"resize": "resize stretches it (choose pad or centre crop to keep its shape)",
                  "center_crop": f"centre crop cuts {'the sides' if aspect > target else 'top and bottom'} off",
                  "pad": f"pad adds black bars {'above and below' if aspect > target else 'left and right'}"}
        notes.append(f"{shape}: {effect.get(mode, mode)}")
    return ("This image is " + "; ".join(notes) + ".") if notes else None
