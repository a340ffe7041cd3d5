"""Pixel arrays: the one check (finite floats in [0, 1], shape (3, H, W) or (B, 3, H, W)) and the
one resize.

Every entry point that takes pixels (analysis, attacks, smoothing, explanations, image
preparation) calls :func:`check_pixels`, so a uint8 array, a normalised image or a NaN is refused
with the same actionable message everywhere (docs/METHOD.md: pixels live in [0, 1]).
:func:`resize_pixels` is the resize of the smoothing space (docs/METHOD.md, "One smoothing
space"): image preparation, the classifier's first layer and DDS's denoised images all use it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fvit_core.errors import InputError, SettingError


def check_pixels(x: np.ndarray | torch.Tensor, *, batched: bool, what: str = "pixels", tolerance: float = 0.0) -> None:
    """Raise :class:`~fvit_core.errors.InputError` unless ``x`` holds finite float pixels in [0, 1].

    Args:
        x: a numpy array or a torch tensor.
        batched: True for a (B, 3, H, W) batch with B >= 1, False for one (3, H, W) image.
        what: the name used in the message ("image", "images", "pixels").
        tolerance: slack allowed outside [0, 1] (float round-off of a resize), in pixel units.
    """
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise InputError(f"{what} must be a numpy array or torch.Tensor of pixels, got {type(x).__name__}")
    shape = tuple(x.shape)
    if batched and (len(shape) != 4 or shape[1] != 3 or shape[0] == 0 or min(shape) < 1):
        raise InputError(f"{what} must be a batch of shape (B, 3, H, W) with B >= 1, got shape {shape}; use x[None] for one image")
    if not batched and (len(shape) != 3 or shape[0] != 3 or min(shape) < 1):
        raise InputError(f"{what} must be an array of shape (3, H, W), got shape {shape}; load images with images.load_image")
    floating = x.is_floating_point() if isinstance(x, torch.Tensor) else np.issubdtype(x.dtype, np.floating)
    if not floating:
        raise InputError(f"{what} must be float pixels in [0, 1], got dtype {x.dtype}; divide uint8 images by 255 "
                         "or decode files with images.load_image")
    if isinstance(x, torch.Tensor):
        low, high = (float(v) for v in torch.aminmax(x.detach()))
    else:
        low, high = float(x.min()), float(x.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{what} must be finite numbers in [0, 1], found NaN or inf")
    if low < -tolerance or high > 1.0 + tolerance:
        raise InputError(f"{what} must be in [0, 1] (got min {low:.3g}, max {high:.3g}); the model normalises "
                         "internally, so pass unnormalised pixels (decode files with images.load_image)")


def resize_pixels(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize of pixel images (B, 3, H, W) to ``size`` = (height, width),
    clamped back to [0, 1]; ``x`` itself when it already has that size. Differentiable (attacks
    back-propagate through it), and never in place."""
    if len(size) != 2 or min(int(v) for v in size) < 1:
        raise SettingError(f"size must be (height, width) with both >= 1, got {tuple(size)}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # Antialiased bicubic has no bfloat16 kernel on the CPU: resize in float32, return x's dtype.
    resized = F.interpolate(x.float(), size=tuple(int(v) for v in size), mode="bicubic", antialias=True,
                            align_corners=False)
    return resized.clamp(0.0, 1.0).to(x.dtype)


def is_uniform_rescale(size: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether pixels of ``size`` (H, W) reach ``target`` by a uniform rescale (same aspect ratio),
    as images of a smoothing space do; anything else would distort the image."""
    return int(size[0]) * int(target[1]) == int(size[1]) * int(target[0]) and min(size) >= 1
