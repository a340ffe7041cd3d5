"""Reliability, round three (issue 26, items 1, 3 and 4): hostile images that escaped the decoder's
budgets. A TIFF of millions of tiny strips (decode time inside libtiff), an MPO that hid a
progressive JPEG from the scan limit, and a thin image that ``--image-mode pad`` letterboxed onto
a canvas of gigabytes. Each file is built by hand, small, and refused before any decoding or
large allocation, in one line.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fuzz_corpus import encode_image, noise_rgb, progressive_scan_bomb
from fvit_core.cli import main as cli
from fvit_core.data import images
from fvit_core.data.images import ImageError, load_image, prepare_image
from fvit_core.data.pixels import resize_pixels
from fvit_core.errors import InputError

# =============================================================================================
# A minimal TIFF writer: any tags, one shared blob of strip data, several pages, both byte
# orders, classic or BigTIFF. Arrays that do not fit an entry go after their directory.
# =============================================================================================

_BYTE, _SHORT, _LONG, _LONG8 = 1, 3, 4, 16
_CODES = {_BYTE: "B", _SHORT: "H", _LONG: "L", _LONG8: "Q"}
Page = dict[int, tuple[int, list[int]]]  # tag -> (type, values)


def _tiff(pages: list[Page], blob: bytes, *, endian: str = "<", big: bool = False) -> bytes:
    """A TIFF file: header, ``blob`` (at :func:`_blob_at`), then each page's directory."""
    inline, entry_size, count_code = (8, 20, "Q") if big else (4, 12, "H")
    header = ((b"II" if endian == "<" else b"MM") + struct.pack(endian + "HHH", 43, 8, 0) if big
              else (b"II" if endian == "<" else b"MM") + struct.pack(endian + "H", 42))
    offset_code = "Q" if big else "L"
    head_len = len(header) + struct.calcsize(endian + offset_code)
    out = bytearray(header + struct.pack(endian + offset_code, head_len + len(blob) + (len(blob) & 1)))
    out += blob + b"\x00" * (len(blob) & 1)
    for number, page in enumerate(pages):
        ifd_at = len(out)
        arrays_at = ifd_at + struct.calcsize(endian + count_code) + entry_size * len(page) + struct.calcsize(endian + offset_code)
        entries, arrays = bytearray(struct.pack(endian + count_code, len(page))), bytearray()
        for tag in sorted(page):
            kind, values = page[tag]
            packed = struct.pack(f"{endian}{len(values)}{_CODES[kind]}", *values)
            if len(packed) <= inline:
                value = packed.ljust(inline, b"\x00")
            else:
                value = struct.pack(endian + offset_code, arrays_at + len(arrays)).ljust(inline, b"\x00")
                arrays += packed + b"\x00" * (len(packed) & 1)
            entries += struct.pack(endian + ("HHQ" if big else "HHL"), tag, kind, len(values)) + value
        last = number == len(pages) - 1
        entries += struct.pack(endian + offset_code, 0 if last else arrays_at + len(arrays))
        out += entries + arrays
    return bytes(out)


def _blob_at(big: bool = False) -> int:
    return 16 if big else 8


def _jpeg_1x1() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (1, 1), 128).save(buffer, "JPEG")
    return buffer.getvalue()


def _strip_page(width: int, length: int, *, strips: int, data_at: int, data_len: int, compression: int = 7,
                rows_per_strip: int = 1, offsets_count: int | None = None) -> Page:
    """An 8-bit grey page whose ``strips`` strips all point at the same ``data_len`` bytes."""
    count = strips if offsets_count is None else offsets_count
    return {256: (_LONG, [width]), 257: (_LONG, [length]), 258: (_SHORT, [8]), 259: (_SHORT, [compression]),
            262: (_SHORT, [1]), 273: (_LONG, [data_at] * count), 277: (_SHORT, [1]),
            278: (_LONG, [rows_per_strip]), 279: (_LONG, [data_len] * count)}


def strip_bomb(strips: int, *, endian: str = "<", big: bool = False, **page) -> bytes:
    """The issue's TIFF bomb, scaled down: a 1 x ``strips`` image of 1-pixel JPEG strips that all
    point at the same 1x1 JPEG (the report's file had 4.8 million: 19 MB, about 100 s)."""
    jpeg = _jpeg_1x1()
    return _tiff([_strip_page(1, strips, strips=strips, data_at=_blob_at(big), data_len=len(jpeg), **page)], jpeg,
                 endian=endian, big=big)


def tile_bomb(side: int, tile: int = 16) -> bytes:
    """A side x side grey image of tile x tile JPEG tiles that all point at the same bytes."""
    buffer = io.BytesIO()
    Image.new("L", (tile, tile), 128).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    tiles = (-(-side // tile)) ** 2
    page = {256: (_LONG, [side]), 257: (_LONG, [side]), 258: (_SHORT, [8]), 259: (_SHORT, [7]), 262: (_SHORT, [1]),
            277: (_SHORT, [1]), 322: (_SHORT, [tile]), 323: (_SHORT, [tile]), 324: (_LONG, [8] * tiles),
            325: (_LONG, [len(jpeg)] * tiles)}
    return _tiff([page], jpeg)


@pytest.fixture
def no_decoding(monkeypatch) -> list:
    """Fails the test if Pillow opens or decodes anything: the refusal must come first."""
    calls: list = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(("load", self)))
    monkeypatch.setattr(Image, "open", lambda *a, **k: calls.append(("open", a)) or pytest.fail("Image.open called"))
    return calls


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400
    return text


# =============================================================================================
# 1. TIFF decode-time bomb: strips and tiles counted from the first directory, before opening
# =============================================================================================


def test_tiff_strip_bomb_is_refused_from_its_directory_before_pillow_opens_it(no_decoding) -> None:
    bomb = strip_bomb(300_000)  # 2.4 MB; 300,000 one-pixel strips, 0.3 megapixels: under every other limit
    assert len(bomb) < 3_000_000
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"^TIFF file has 300,000 strips, over the limit of 262,144 \(.*\): each is "
                                         r"decoded on its own, .* re-save it with fewer, larger strips, or as PNG$") as info:
        load_image(bomb)
    elapsed = time.perf_counter() - started
    _one_line(info)
    assert no_decoding == []  # neither opened nor decoded
    assert elapsed < 1.0  # the check reads directory entries, not the 300,000-entry arrays (measured: < 1 ms)


@pytest.mark.parametrize("endian, big", [(">", False), ("<", True), (">", True)], ids=["big-endian", "BigTIFF",
                                                                                       "big-endian BigTIFF"])
def test_tiff_strip_bomb_is_refused_in_every_byte_order_and_in_bigtiff(no_decoding, endian, big) -> None:
    # (Pillow misreads a big-endian BigTIFF header as a classic one; libtiff, which decodes the
    # file, reads it as BigTIFF: the check reads the directory both ways.)
    with pytest.raises(ImageError, match="^TIFF file has 300,000 strips, over the limit of 262,144"):
        load_image(strip_bomb(300_000, endian=endian, big=big))
    assert no_decoding == []


def test_a_short_strip_array_cannot_hide_the_strips_the_geometry_implies(no_decoding) -> None:
    # libtiff pads a StripOffsets array shorter than ImageLength / RowsPerStrip with zeros and
    # decodes every strip: the count comes from the geometry too.
    bomb = strip_bomb(300_000, offsets_count=1)
    assert len(bomb) < 1_000
    with pytest.raises(ImageError, match="^TIFF file has 300,000 strips"):
        load_image(bomb)
    assert no_decoding == []


def test_tiff_tile_bomb_is_refused(no_decoding) -> None:
    bomb = tile_bomb(16 * 520)  # 8320x8320 of 16x16 tiles (the smallest TIFF allows): 270,400 tiles, 2.2 MB
    with pytest.raises(ImageError, match="^TIFF file has 270,400 tiles, over the limit of 262,144 .* larger tiles, or as PNG$"):
        load_image(bomb, max_pixels=100_000_000)
    assert no_decoding == []


def test_geometry_over_the_pixel_limit_is_left_to_the_pixel_check() -> None:
    # 1 x 50,000,000 with one row per strip but a one-entry array: the pixel limit refuses it, in its own words
    with pytest.raises(ImageError, match="^image is 1x50000000 = 50,000,000 pixels, over the limit of 40,000,000"):
        load_image(strip_bomb(50_000_000, offsets_count=1))


def test_the_strip_limit_is_exact_and_strip_tiffs_below_it_decode(monkeypatch) -> None:
    monkeypatch.setattr(images, "MAX_TIFF_CHUNKS", 1_000)
    pixels = load_image(strip_bomb(1_000))  # the same bytes 1,000 times: legal TIFF, decoded
    assert pixels.shape == (3, 1_000, 1) and np.allclose(pixels, 128 / 255, atol=2 / 255)
    with pytest.raises(ImageError, match="^TIFF file has 1,001 strips, over the limit of 1,000 "):
        load_image(strip_bomb(1_001))


def test_the_strip_limit_follows_a_short_time_budget() -> None:
    # At TIFF_CHUNK_SECONDS (25 us) per strip, a 1 s budget allows 40,000 strips.
    assert int(1.0 / images.TIFF_CHUNK_SECONDS) == 40_000
    with pytest.raises(ImageError, match=r"^TIFF file has 40,001 strips, over the limit of 40,000 \(the most that "
                                         r"decode within the 1 s budget\)"):
        load_image(strip_bomb(40_001), max_seconds=1.0)
    assert load_image(strip_bomb(4_000), max_seconds=1.0).shape == (3, 4_000, 1)
    with pytest.raises(ImageError, match="over the limit of 262,144 "):  # no budget: the fixed limit still holds
        load_image(strip_bomb(300_000), max_seconds=None)


def test_ordinary_tiffs_are_untouched_by_the_strip_limit() -> None:
    rgb = Image.fromarray(noise_rgb(300, 200))
    for compression in ("raw", "tiff_deflate", "tiff_lzw", "jpeg", "packbits"):
        data = encode_image(rgb, "TIFF", compression=compression)
        assert load_image(data).shape == (3, 300, 200), compression
    tiled = encode_image(rgb, "TIFF", compression="tiff_deflate", tile=(64, 64)) if _pillow_writes_tiles() else None
    if tiled is not None:
        assert load_image(tiled).shape == (3, 300, 200)
    one_row_per_strip = _tiff([_strip_page(4, 3, strips=3, data_at=8, data_len=4, compression=1)], bytes(range(0, 48, 4)))
    assert load_image(one_row_per_strip).shape == (3, 3, 4)


def _pillow_writes_tiles() -> bool:
    try:
        encode_image(Image.new("L", (32, 32)), "TIFF", compression="tiff_deflate", tile=(16, 16))
    except (TypeError, ValueError, OSError):
        return False
    return True


def test_only_the_first_page_of_a_multi_page_tiff_is_read() -> None:
    # Page 1: an ordinary 4x4 grey image; page 2: a strip bomb. Pillow opens and decodes only the
    # first page here (and libtiff is pointed at its directory), so the bomb is never looked at...
    jpeg, grey = _jpeg_1x1(), bytes(range(0, 256, 16))
    first = _strip_page(4, 4, strips=1, data_at=8 + len(jpeg), data_len=16, compression=1, rows_per_strip=4)
    second = _strip_page(1, 300_000, strips=300_000, data_at=8, data_len=len(jpeg))
    two_pages = _tiff([first, second], jpeg + grey)
    with Image.open(io.BytesIO(two_pages)) as image:
        assert image.n_frames == 2
    started = time.perf_counter()
    pixels = load_image(two_pages)
    assert time.perf_counter() - started < 1.0
    assert pixels.shape == (3, 4, 4) and np.allclose(pixels[0].ravel(), np.arange(0, 256, 16) / 255.0)
    # ...and a bomb on the first page is refused whatever follows it.
    with pytest.raises(ImageError, match="^TIFF file has 300,000 strips"):
        load_image(_tiff([second, first], jpeg + grey))


@pytest.mark.parametrize("damage", ["directory past the end", "entry count past the end", "no strip tags", "BigTIFF header only"])
def test_unreadable_tiff_directories_are_left_to_pillow(damage: str) -> None:
    good = strip_bomb(10)
    data = {"directory past the end": good[:4] + struct.pack("<L", 10**9) + good[8:],
            "entry count past the end": good[:-200],
            "no strip tags": _tiff([{256: (_LONG, [1]), 257: (_LONG, [1])}], b""),
            "BigTIFF header only": b"II+\x00\x08\x00\x00\x00"}[damage]
    with pytest.raises(ImageError) as info:  # Pillow's own refusal, never a struct.error
        load_image(data)
    assert not str(info.value).startswith("TIFF file has")
    _one_line(info)


def test_the_cli_refuses_the_tiff_bomb_in_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "strips.tif"
    path.write_bytes(strip_bomb(300_000))
    code = cli.main(["analyze", str(path), "--classifier", str(tmp_path / "never-loaded"), "--denoiser",
                     str(tmp_path / "never-loaded")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "TIFF file has 300,000 strips" in err[0]


# =============================================================================================
# 2. MPO: the scan limit covers every JPEG image of a multi-picture file
# =============================================================================================


def mpo(first: bytes, second: bytes) -> bytes:
    """A two-image MPO (CIPA DC-007) as cameras write it: ``first`` with an APP2 "MPF" segment
    after its SOI (a little-endian TIFF directory: version, number of images, two 16-byte MP
    entries), then ``second`` appended. Offsets are relative to the MPF directory's header."""
    entries_at = 50
    directory = (b"II*\x00" + struct.pack("<IH", 8, 3) + struct.pack("<HHI4s", 0xB000, 7, 4, b"0100")
                 + struct.pack("<HHII", 0xB001, 4, 1, 2) + struct.pack("<HHII", 0xB002, 7, 32, entries_at) + b"\x00" * 4)
    assert len(directory) == entries_at
    segment_len = 2 + 4 + len(directory) + 32
    first_size = len(first) + 2 + segment_len
    mpf_header_at = 2 + 4 + 4  # SOI, APP2 marker and length, b"MPF\0"
    entries = (struct.pack("<IIIHH", 0x20030000, first_size, 0, 0, 0)  # representative baseline primary image
               + struct.pack("<IIIHH", 0x00020002, len(second), first_size - mpf_header_at, 0, 0))  # disparity image
    app2 = b"\xff\xe2" + struct.pack(">H", segment_len) + b"MPF\x00" + directory + entries
    return first[:2] + app2 + first[2:] + second


def _baseline(side: int = 32) -> bytes:
    return encode_image(Image.fromarray(noise_rgb(side, side)), "JPEG", quality=90)


@pytest.mark.parametrize("where", ["first", "second"])
def test_a_progressive_scan_bomb_inside_an_mpo_is_refused_before_decoding(where: str, monkeypatch) -> None:
    bomb = progressive_scan_bomb(64, 1000)
    data = mpo(bomb, _baseline()) if where == "first" else mpo(_baseline(), bomb)
    with Image.open(io.BytesIO(data)) as image:  # what made it slip through: Pillow calls it MPO, not JPEG
        assert image.format == "MPO" and image.n_frames == 2
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    with pytest.raises(ImageError, match=r"^MPO file \(a JPEG holding 2 images\) has 1,001 scans, over the limit of "
                                         r"100 .* re-export it$") as info:
        load_image(data)
    _one_line(info)
    assert loads == []  # refused before a single pixel was decoded


def test_ordinary_mpo_files_still_decode() -> None:
    ordinary = encode_image(Image.fromarray(noise_rgb(48, 64)), "JPEG", progressive=True, quality=90)
    for data in (mpo(_baseline(), _baseline()), mpo(ordinary, _baseline())):
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "MPO"
        assert load_image(data).shape[0] == 3
    buffer = io.BytesIO()  # Pillow's own MPO writer (a stereo pair)
    Image.fromarray(noise_rgb(40, 30)).save(buffer, "MPO", save_all=True, append_images=[Image.fromarray(noise_rgb(40, 30, 1))])
    assert load_image(buffer.getvalue()).shape == (3, 40, 30)
    at_limit = mpo(progressive_scan_bomb(32, images.MAX_JPEG_SCANS - 1), _baseline())  # 99 + 1 scans: allowed
    assert load_image(at_limit).shape == (3, 32, 32)


def test_the_cli_refuses_the_mpo_bomb_in_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "stereo.jpg"
    path.write_bytes(mpo(_baseline(), progressive_scan_bomb(64, 1000)))
    code = cli.main(["analyze", str(path), "--classifier", str(tmp_path / "never-loaded"), "--denoiser",
                     str(tmp_path / "never-loaded")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "MPO file (a JPEG holding 2 images) has 1,001 scans" in err[0]


# =============================================================================================
# 3. --image-mode pad: the letterbox canvas is bounded by the pixel limit before it is allocated
# =============================================================================================


def _old_pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """prepare_image's pad branch as it was before the fix: the numbers must not change."""
    top, left, padded_h, padded_w = images.pad_box(image.shape[1], image.shape[2], size)
    canvas = np.full((3, padded_h, padded_w), images.PAD_VALUE, dtype=np.float32)
    canvas[:, top:top + image.shape[1], left:left + image.shape[2]] = image
    return resize_pixels(torch.from_numpy(np.array(canvas, dtype=np.float32, copy=True))[None], size)[0].numpy()


def test_a_thin_image_padded_to_a_huge_canvas_is_refused_before_allocating() -> None:
    thin = np.full((3, 1, 16383), 0.5, dtype=np.float32)  # the 132-byte 16383x1 PNG, decoded
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=r"^image mode pad would letterbox this 16383x1 image on a 16383x16383 "
                                             r"canvas = 268,402,689 pixels, over the limit of 40,000,000; use image "
                                             r"mode resize or center_crop \(--image-mode in the CLI\)") as info:
            prepare_image(thin, (224, 224), mode="pad")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # nothing near the 3.2 GB canvas was allocated
    assert isinstance(info.value, InputError)
    _one_line(info)
    for mode in ("resize", "center_crop"):  # the modes the message suggests work on the same image
        assert prepare_image(thin, (224, 224), mode=mode).shape == (3, 224, 224)


def test_the_canvas_limit_is_exact_and_follows_max_pixels() -> None:
    image = np.full((3, 10, 40), 0.25, dtype=np.float32)  # pads to 40x40 = 1,600 pixels for a square input
    assert prepare_image(image, (8, 8), mode="pad", max_pixels=1_600).shape == (3, 8, 8)
    with pytest.raises(ImageError, match="on a 40x40 canvas = 1,600 pixels, over the limit of 1,599;"):
        prepare_image(image, (8, 8), mode="pad", max_pixels=1_599)
    assert prepare_image(image, (8, 8), mode="resize", max_pixels=1).shape == (3, 8, 8)  # only pad builds a canvas


@pytest.mark.parametrize("shape, size", [((3, 37, 53), (32, 32)), ((3, 53, 37), (32, 32)), ((3, 9, 300), (16, 24)),
                                          ((3, 300, 9), (24, 16)), ((3, 32, 32), (32, 32)), ((3, 1, 1), (5, 7)),
                                          ((3, 100, 40), (40, 100))])
def test_pad_gives_the_same_numbers_as_before_for_canvases_that_fit(shape, size) -> None:
    image = np.random.default_rng(sum(shape) + sum(size)).random(shape, dtype=np.float32)
    assert np.array_equal(prepare_image(image, size, mode="pad"), _old_pad(image, size))


def test_pad_allocates_one_canvas_not_two() -> None:
    image = np.random.default_rng(3).random((3, 300, 1200), dtype=np.float32)
    canvas_bytes = 1200 * 1200 * 3 * 4  # 17 MB of float32
    tracemalloc.start()
    try:
        prepare_image(image, (32, 32), mode="pad")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * canvas_bytes  # the old code copied the canvas once more before resizing


def test_the_cli_refuses_pad_for_a_thin_image_in_one_line(tiny_pair_dir, tmp_path, capsys) -> None:
    path = tmp_path / "thin.png"
    Image.new("RGB", (16383, 1), (200, 100, 50)).save(path)
    assert path.stat().st_size < 1_000
    code = cli.main(["analyze", str(path), "--classifier", str(tiny_pair_dir / "classifier"), "--denoiser",
                     str(tiny_pair_dir / "denoiser"), "--image-mode", "pad", "--n-samples", "4", "--steps", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("fvit analyze: note:")]
    assert code == 2 and len(err) == 1, err  # one error line (the fit notice before it is a note)
    assert err[0].startswith("fvit analyze: error: image mode pad would letterbox this 16383x1 image on a "
                             "16383x16383 canvas") and "--image-mode" in err[0]
    assert "batch" not in err[0]  # the old failure blamed --batch-size
