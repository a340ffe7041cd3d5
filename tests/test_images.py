"""The image decoder: formats, modes, orientation, limits, corrupted input, resizing helpers."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from fvit_core.data.images import (
    ImageError,
    center_crop_box,
    pad_box,
    image_digest,
    load_image,
    prepare_image,
    to_uint8,
)

PALETTE = np.array([[255, 0, 0], [0, 128, 255], [255, 255, 255], [10, 200, 30]], dtype=np.uint8)


def _rgb_image(width: int = 8, height: int = 6) -> np.ndarray:
    """(H, W, 3) uint8 with four colours in 2x2 blocks (exact in GIF, mild for JPEG)."""
    index = (np.arange(height)[:, None] // 2 + np.arange(width)[None, :] // 2) % len(PALETTE)
    return PALETTE[index]


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header claims width x height RGB pixels and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def _noisy_bytes(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return _encode(Image.fromarray(pixels), fmt)


def _assert_pixels(array: np.ndarray, height: int, width: int) -> None:
    assert array.dtype == np.float32 and array.shape == (3, height, width)
    assert np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kwargs", "tolerance"),
    [
        ("PNG", {}, 0.0),
        ("JPEG", {"quality": 95, "subsampling": 0}, 0.03),
        ("WEBP", {"lossless": True}, 0.0),
        ("BMP", {}, 0.0),
        ("TIFF", {}, 0.0),
        ("GIF", {}, 0.0),
    ],
)
def test_each_format_round_trips(fmt, kwargs, tolerance) -> None:
    rgb = _rgb_image()
    loaded = load_image(_encode(Image.fromarray(rgb), fmt, **kwargs))
    _assert_pixels(loaded, 6, 8)
    expected = rgb.transpose(2, 0, 1) / 255.0
    assert np.abs(loaded - expected).mean() <= tolerance + 1e-6


def test_path_and_pil_sources(tmp_path) -> None:
    rgb = _rgb_image()
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    from_path, from_str = load_image(path), load_image(str(path))
    from_pil = load_image(Image.fromarray(rgb))
    assert np.array_equal(from_path, from_str) and np.array_equal(from_path, from_pil)


def test_animated_gif_gives_the_first_frame() -> None:
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    loaded = load_image(_encode(red, "GIF", save_all=True, append_images=[blue]))
    assert np.allclose(loaded[:, 0, 0], [1.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    return image


MODE_CASES = {
    "I;16 max": (lambda: Image.fromarray(np.array([[65535, 0]], dtype=np.uint16)), [[1, 1, 1], [0, 0, 0]]),
    "I;16 mid": (lambda: Image.fromarray(np.array([[32768, 300]], dtype=np.uint16)),
                 [[32768 / 65535] * 3, [300 / 65535] * 3]),
    "RGBA transparent": (lambda: Image.new("RGBA", (2, 1), (255, 0, 0, 0)), [[1, 1, 1], [1, 1, 1]]),
    "RGBA half red": (lambda: Image.new("RGBA", (2, 1), (255, 0, 0, 102)), [[1, 0.6, 0.6], [1, 0.6, 0.6]]),
    "LA transparent": (lambda: Image.new("LA", (2, 1), (0, 0)), [[1, 1, 1], [1, 1, 1]]),
    "P transparency": (_palette_with_transparency, [[1, 0, 0], [1, 1, 1]]),
    "CMYK cyan": (lambda: Image.new("CMYK", (2, 1), (255, 0, 0, 0)), [[0, 1, 1], [0, 1, 1]]),
    "I 8-bit": (lambda: Image.fromarray(np.array([[255, 51]], dtype=np.int32)), [[1, 1, 1], [0.2, 0.2, 0.2]]),
    "I 16-bit": (lambda: Image.fromarray(np.array([[65535, 1000]], dtype=np.int32)),
                 [[1, 1, 1], [1000 / 65535] * 3]),
    "I wide": (lambda: Image.fromarray(np.array([[200000, 50000]], dtype=np.int32)), [[1, 1, 1], [0.25] * 3]),
    "F unit": (lambda: Image.fromarray(np.array([[0.25, 1.0]], dtype=np.float32)), [[0.25] * 3, [1, 1, 1]]),
    "F wide": (lambda: Image.fromarray(np.array([[4.0, 1.0]], dtype=np.float32)), [[1, 1, 1], [0.25] * 3]),
    "1": (lambda: Image.new("1", (2, 1), 1), [[1, 1, 1], [1, 1, 1]]),
    "L": (lambda: Image.new("L", (2, 1), 51), [[0.2] * 3, [0.2] * 3]),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_modes_convert_with_correct_values(case) -> None:
    make, expected = MODE_CASES[case]
    loaded = load_image(make())
    _assert_pixels(loaded, 1, 2)
    assert np.allclose(loaded[:, 0, :].T, np.array(expected, dtype=np.float32), atol=1e-6)


@pytest.mark.parametrize(
    ("case", "fmt"),
    [("I;16 max", "PNG"), ("RGBA transparent", "PNG"), ("LA transparent", "PNG"), ("P transparency", "PNG"),
     ("P transparency", "GIF"), ("CMYK cyan", "TIFF"), ("CMYK cyan", "JPEG"), ("F wide", "TIFF"), ("1", "BMP")],
)
def test_modes_survive_encoding(case, fmt) -> None:
    make, expected = MODE_CASES[case]
    loaded = load_image(_encode(make(), fmt))
    atol = 2 / 255 if fmt == "JPEG" else 1e-6
    assert np.allclose(loaded[:, 0, :].T, np.array(expected, dtype=np.float32), atol=atol)


def test_sixteen_bit_grey_with_colour_key_keeps_its_scale() -> None:
    data = _encode(Image.fromarray(np.array([[65535, 1000]], dtype=np.uint16)), "PNG", transparency=1000)
    assert np.allclose(load_image(data)[:, 0, :].T, [[1, 1, 1], [1000 / 65535] * 3], atol=1e-6)


def test_exif_orientation_is_applied() -> None:
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)  # H=10, W=20: left half red, right half blue
    rgb[:, :10, 0] = 255
    rgb[:, 10:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = load_image(_encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes()))
    _assert_pixels(loaded, 20, 10)
    top, bottom = loaded[:, :8].mean(axis=(1, 2)), loaded[:, 12:].mean(axis=(1, 2))
    assert top[0] > 0.9 and top[2] < 0.1 and bottom[2] > 0.9 and bottom[0] < 0.1


# ---------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated_files_are_rejected(fmt) -> None:
    data = _noisy_bytes(fmt)
    with pytest.raises(ImageError, match="truncated|cannot identify|not a readable"):
        load_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_message_is_one_actionable_line() -> None:
    data = _noisy_bytes("PNG")
    with pytest.raises(ImageError) as info:
        load_image(data[: len(data) // 2])
    assert "\n" not in str(info.value) and "re-export" in str(info.value)


def test_empty_text_and_missing_inputs(tmp_path) -> None:
    with pytest.raises(ImageError, match="empty file"):
        load_image(b"")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image\n")
    with pytest.raises(ImageError, match=r"not a readable image \(supported: PNG, JPEG, WebP, BMP, TIFF, GIF\): cannot identify"):
        load_image(text)
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="pass bytes"):
        load_image(12345)  # type: ignore[arg-type]


def test_formats_outside_the_list_are_rejected() -> None:
    data = _encode(Image.new("RGB", (4, 4)), "PPM")
    with pytest.raises(ImageError, match="cannot identify"):
        load_image(data)


def test_pixel_bomb_rejected_before_decoding() -> None:
    with pytest.raises(ImageError, match="pixels"):
        load_image(_png_header_claiming(100_000, 100_000))
    # Between our limit (40M) and Pillow's warning level (89M): our own check must catch it. The
    # file holds no pixel data, so a decode attempt would report "truncated" instead.
    with pytest.raises(ImageError, match=r"8000x6000 = 48,000,000 pixels, over the limit of 40,000,000"):
        load_image(_png_header_claiming(8000, 6000))


def test_decompression_bomb_warning_becomes_an_error() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="decompression bomb"):
            load_image(_png_header_claiming(10_000, 10_000), max_pixels=10**9)  # 100M > Pillow's 89M
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_limit_is_local() -> None:
    data = _encode(Image.new("RGB", (20, 20)), "PNG")
    with pytest.raises(ImageError, match="20x20 = 400 pixels, over the limit of 399"):
        load_image(data, max_pixels=399)
    _assert_pixels(load_image(data, max_pixels=400), 20, 20)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(Image.new("RGB", (20, 20)), max_pixels=399)


def test_byte_limit(tmp_path) -> None:
    data = _encode(Image.new("RGB", (20, 20)), "PNG")
    with pytest.raises(ImageError, match="bytes, over the limit"):
        load_image(data, max_bytes=len(data) - 1)
    path = tmp_path / "image.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="image.png is .* bytes, over the limit"):
        load_image(path, max_bytes=len(data) - 1)
    _assert_pixels(load_image(path, max_bytes=len(data)), 20, 20)


@given(st.binary(min_size=0, max_size=2048))
@settings(max_examples=150, deadline=None)
def test_random_bytes_only_ever_raise_image_error(data: bytes) -> None:
    _check_decoder_contract(data)


VALID_SMALL = {fmt: _encode(Image.fromarray(_rgb_image(12, 10)), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@given(
    st.sampled_from(sorted(VALID_SMALL)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10**6),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF tags we make
def test_corrupted_images_only_ever_raise_image_error(fmt, flips, cut) -> None:
    data = bytearray(VALID_SMALL[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    _check_decoder_contract(bytes(data[: max(1, cut % (len(data) + 1))]))


def _check_decoder_contract(data: bytes) -> None:
    try:
        loaded = load_image(data, max_pixels=1_000_000)
    except ImageError:
        return
    assert loaded.dtype == np.float32 and loaded.ndim == 3 and loaded.shape[0] == 3
    assert np.isfinite(loaded).all() and loaded.min() >= 0.0 and loaded.max() <= 1.0


# ---------------------------------------------------------------------------------------------
# Preparing, digests, export
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1, 1), (500, 1), (1, 500)])
def test_tiny_and_extreme_images_load_and_prepare(width, height) -> None:
    loaded = load_image(_encode(Image.new("RGB", (width, height), (255, 128, 0)), "PNG"))
    _assert_pixels(loaded, height, width)
    for mode in ("resize", "center_crop"):
        for size in ((32, 32), (1, 1), (3, 40)):
            prepared = prepare_image(loaded, size, mode=mode)
            _assert_pixels(prepared, *size)
            assert np.allclose(prepared[:, 0, 0], [1.0, 128 / 255, 0.0], atol=1e-5)  # constant stays constant


def test_resize_keeps_the_whole_image_and_center_crop_the_middle() -> None:
    image = np.zeros((3, 10, 30), dtype=np.float32)
    image[:, :, 10:20] = 1.0  # a white middle third
    resized = prepare_image(image, (10, 10))
    assert resized[:, :, 0].max() < 0.05 and resized[:, :, -1].max() < 0.05 and resized[:, :, 5].min() > 0.95
    cropped = prepare_image(image, (10, 10), mode="center_crop")
    assert np.allclose(cropped, 1.0)
    assert center_crop_box(10, 30, (10, 10)) == (0, 10, 10, 10)
    assert center_crop_box(30, 10, (4, 8)) == (12, 0, 5, 10)


def test_pad_letterboxes_the_whole_image_without_distortion() -> None:
    image = np.ones((3, 10, 30), dtype=np.float32)  # white, three times wider than high
    padded = prepare_image(image, (30, 30), mode="pad")
    _assert_pixels(padded, 30, 30)
    # 30x30 canvas: the image fills rows 10..19 at full width, black bars above and below.
    assert np.allclose(padded[:, 11:19, :], 1.0, atol=1e-5)
    assert padded[:, :9].max() < 1e-5 and padded[:, 21:].max() < 1e-5
    assert pad_box(10, 30, (30, 30)) == (10, 0, 30, 30)
    assert pad_box(30, 10, (4, 8)) == (0, 25, 30, 60)
    assert pad_box(16, 16, (32, 32)) == (0, 0, 16, 16)  # same aspect: no bars, same as resize
    square = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(prepare_image(square, (32, 32), mode="pad"), prepare_image(square, (32, 32)))
    with pytest.raises(ValueError, match="pad"):
        prepare_image(image, (8, 8), mode="letterbox")


def test_prepare_clamps_bicubic_overshoot() -> None:
    checker = (np.indices((16, 16)).sum(axis=0) % 2).astype(np.float32)
    prepared = prepare_image(np.stack([checker] * 3), (40, 40))
    assert prepared.min() >= 0.0 and prepared.max() <= 1.0


@pytest.mark.parametrize(
    ("image", "size", "mode", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), (8, 8), "resize", "shape"),
        (np.zeros((3, 4, 4), np.float32), (0, 8), "resize", "positive integers"),
        (np.zeros((3, 4, 4), np.float32), (8,), "resize", "positive integers"),
        (np.zeros((3, 4, 4), np.float32), (8, 8), "stretch", "center_crop"),
    ],
)
def test_prepare_rejects_bad_arguments(image, size, mode, message) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_image(image, size, mode=mode)


def test_image_digest() -> None:
    image = np.random.default_rng(0).random((3, 4, 6), dtype=np.float32)
    digest = image_digest(image)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert digest == image_digest(image.copy()) == image_digest(image.astype(np.float64))
    changed = image.copy()
    changed[0, 0, 0] += 1e-3
    assert image_digest(changed) != digest
    assert image_digest(image.reshape(3, 6, 4)) != digest  # same bytes, other shape


def test_to_uint8_and_a_png_round_trip(tmp_path) -> None:
    image = np.random.default_rng(1).random((3, 5, 7), dtype=np.float32)
    as_uint8 = to_uint8(image)
    assert as_uint8.shape == (5, 7, 3) and as_uint8.dtype == np.uint8
    assert np.array_equal(as_uint8, np.round(image * 255).astype(np.uint8).transpose(1, 2, 0))
    path = tmp_path / "out.png"
    Image.fromarray(as_uint8).save(path)
    assert np.allclose(load_image(path), as_uint8.transpose(2, 0, 1) / 255.0, atol=1e-7)
