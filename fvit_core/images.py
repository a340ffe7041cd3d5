"""The one validated image decoder: bytes / files / PIL images -> float32 (3, H, W) in [0, 1].

Untrusted uploads go through :func:`load_image`, which rejects oversized inputs *before*
decoding (byte count, then the pixel count read from the header), restricts Pillow to six
formats, applies the EXIF orientation and converts every mode to RGB with the right scale
(16-bit grey keeps its 16 bits; transparency is composited over white). Any failure is an
:class:`ImageError` (a ValueError) with one actionable line.

:func:`prepare_image` fits an image to a model's input size (docs/method.md, section 2: pixels
in [0, 1], bicubic antialiased resizing), :func:`image_digest` keys caches.

Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here (truncated files must fail),
and DecompressionBombWarning is raised as an error while decoding.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .denoise import resize_pixels

SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_SUPPORTED_TEXT = "PNG, JPEG, WebP, BMP, TIFF, GIF"
DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | Image.Image
PrepareMode = Literal["resize", "center_crop", "pad"]
PREPARE_MODES: tuple[str, ...] = ("resize", "center_crop", "pad")
PAD_VALUE = 0.0  # letterbox bars are black, as in video letterboxing


class ImageError(ValueError):
    """An input is not a usable image; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(
    source: ImageSource,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode an image into float32 pixels of shape (3, H, W) in [0, 1].

    Args:
        source: encoded bytes, a file path, or an already opened PIL image.
        max_bytes: reject larger encoded inputs before reading them (not for PIL images).
        max_pixels: reject images with more than this many pixels (W * H), checked from the
            header before any pixel is decoded. Pillow's own bomb limit (2 * MAX_IMAGE_PIXELS)
            still applies above it.

    Formats: PNG, JPEG, WebP, BMP, TIFF, GIF (first frame). EXIF orientation is applied. Modes:
    RGBA / LA / P with transparency are composited over white; I;16 is scaled by 1/65535; I by
    its bit depth (<= 255: 8-bit, <= 65535: 16-bit, else by its maximum); F is kept if its
    maximum is <= 1, else divided by its maximum; CMYK, 1, L, P and others convert to RGB.

    Raises:
        ImageError: empty, oversized, truncated, corrupted or unsupported input.
    """
    if isinstance(source, Image.Image):
        _check_pixel_count(source.size, max_pixels)
        return _decode_opened(source, source.format or "image")
    data = _read_bytes(source, max_bytes)
    with warnings.catch_warnings():
        # A bomb warning means the header promises a huge image: refuse it, never decode it.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _decode_bytes(data, max_pixels)


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


def _decode_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
            _check_pixel_count(image.size, max_pixels)
            return _decode_opened(image, image.format or "image")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image header claims too many pixels (decompression bomb): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a readable image (supported: {_SUPPORTED_TEXT}): cannot identify image file") from exc
    except ImageError:
        raise
    except Exception as exc:  # a plugin failing while parsing the header
        raise ImageError(f"not a readable image (supported: {_SUPPORTED_TEXT}): {exc}") from exc


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; downscale it first"
        )


def _decode_opened(image: Image.Image, label: str) -> np.ndarray:
    """Decode the first frame of an opened image, orient it and convert it to (3, H, W) floats."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        pixels = _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib/struct errors
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"corrupted or truncated {label} file, re-export or re-download it: {message}") from exc
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Mode conversion: each returns (H, W, 3) float32 in [0, 1]
# --------------------------------------------------------------------------------------------

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    # A tRNS colour key (info["transparency"]) only matters for 8-bit modes; 16-bit grey keeps its scale.
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        return _composite_over_white(image)
    if mode.startswith("I;16"):
        return _grey(np.asarray(image).astype(np.float32) / 65535.0)
    if mode == "I":
        return _grey(_scale_integer(np.asarray(image)))
    if mode == "F":
        return _grey(_scale_float(np.asarray(image)))
    if mode in ("1", "L"):
        return _grey(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # RGB, CMYK, YCbCr, P, ...


def _composite_over_white(image: Image.Image) -> np.ndarray:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)


def _grey(values: np.ndarray) -> np.ndarray:
    values = np.clip(values.astype(np.float32), 0.0, 1.0)
    return np.repeat(values[..., None], 3, axis=-1)


def _scale_integer(values: np.ndarray) -> np.ndarray:
    """32-bit integer grey: infer the bit depth from the range (8, 16, else by the maximum)."""
    values = np.clip(values.astype(np.float32), 0.0, None)  # exact below 2**24
    peak = float(values.max()) if values.size else 0.0
    scale = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return (values / scale).astype(np.float32)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Float grey: taken as [0, 1] when its maximum is <= 1, else divided by its maximum."""
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ImageError("floating-point image holds NaN or infinite values; save it as 8- or 16-bit")
    peak = float(values.max()) if values.size else 0.0
    return (values / peak if peak > 1.0 else values).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Preparing for a model, digests, export
# --------------------------------------------------------------------------------------------


def _check_pixels(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[0] != 3 or min(image.shape) < 1:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an image array of shape (3, H, W), got {shape}; load it with images.load_image")


def _check_range(image: np.ndarray) -> None:
    """Pixels must be finite floats in [0, 1]: uint8 or normalised arrays would be clamped into garbage."""
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected float pixels in [0, 1], got dtype {image.dtype}; divide uint8 images by 255 "
                         "or decode files with images.load_image")
    if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
        raise ValueError("pixels must be finite and in [0, 1]; decode files with images.load_image")


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


def prepare_image(image: np.ndarray, size: tuple[int, int], *, mode: PrepareMode = "resize") -> np.ndarray:
    """Fit pixels (3, H, W) in [0, 1] to ``size`` = (h, w): returns float32 (3, h, w) in [0, 1].

    ``resize`` keeps the whole image (aspect ratio not kept); ``center_crop`` first crops the
    largest centred region with the target aspect ratio; ``pad`` (letterbox) first centres the
    whole image on a black canvas with the target aspect ratio, so nothing is cut or distorted.
    Resizing is bicubic with antialiasing (denoise.resize_pixels), clamped to [0, 1].
    """
    _check_pixels(image)
    _check_range(image)
    if not isinstance(size, (tuple, list)) or len(size) != 2 or any(
            isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) or not np.isfinite(s)
            or int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be two positive integers (height, width), got {size!r}")
    target = (int(size[0]), int(size[1]))
    if mode == "center_crop":
        top, left, crop_h, crop_w = center_crop_box(image.shape[1], image.shape[2], target)
        image = image[:, top:top + crop_h, left:left + crop_w]
    elif mode == "pad":
        top, left, padded_h, padded_w = pad_box(image.shape[1], image.shape[2], target)
        canvas = np.full((image.shape[0], padded_h, padded_w), PAD_VALUE, dtype=np.float32)
        canvas[:, top:top + image.shape[1], left:left + image.shape[2]] = image
        image = canvas
    elif mode != "resize":
        raise ValueError(f"mode must be one of {', '.join(PREPARE_MODES)}, got {mode!r}")
    pixels = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))[None]
    return resize_pixels(pixels, target)[0].numpy()


def image_digest(image: np.ndarray) -> str:
    """A cache key: first 16 hex digits of sha256(shape, float32 bytes)."""
    pixels = np.ascontiguousarray(image, dtype=np.float32)
    hasher = hashlib.sha256(np.asarray(pixels.shape, dtype=np.int64).tobytes())
    hasher.update(pixels.tobytes())
    return hasher.hexdigest()[:16]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Pixels (3, H, W) in [0, 1] -> uint8 (H, W, 3), rounded to the nearest level."""
    _check_pixels(image)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0).copy()


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write pixels (3, H, W) in [0, 1] as an 8-bit RGB PNG; returns the path."""
    path = Path(path)
    Image.fromarray(to_uint8(image)).save(path, format="PNG")
    return path
