"""The pixel space of an analysis: the one image size in which noise, attacks and radii live.

docs/METHOD.md, "One smoothing space". With a denoiser, DDS adds its Gaussian noise at the
denoiser's resolution (the noise the UNet was trained on at t* is white, of std 2*sigma in
diffusion units, at its own size), denoises there, and only the denoised image is resized to the
classifier's input (Carlini et al. 2023: noise and certificate at 256 px, classifier at 224).
Resizing a noisy image instead would hand the UNet noise of a smaller std and with spatial
correlation (std 0.41 instead of 0.50 and a neighbour correlation of 0.27 for 224 -> 256 px), which
it was never trained on.

So the image is prepared once, at :func:`smoothing_size`, and every model sees it through the same
resize, which is the classifier's first layer (:class:`~fvit_core.models.PixelViT`): the vanilla
ViT, the attack (crafted through the resize) and the FViT (through denoiser and resize). Clean and
attacked images, perturbation norms and certified radii are then all in one pixel space. RS (no
denoiser) keeps the classifier's size. For the shipped pair both sizes are 32 and nothing is
resized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fvit_core.errors import SettingError

if TYPE_CHECKING:  # models imports this module; the pair type is only needed for annotations
    from fvit_core.models import ModelPair


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


def smoothing_size(pair: "ModelPair", mode: str = "dds") -> tuple[int, int]:
    """(H, W) in pixels of the space an analysis of ``pair`` in smoothing ``mode`` works in.

    The denoiser's sample size whenever the mode denoises (dds, denoise-only, multistep) or the
    caller evaluates several modes of a pair that has a denoiser (``mode="vanilla"``: the vanilla
    ViT shares the FViT's attacked image); the classifier's input size for ``rs`` and for a pair
    without a denoiser.
    """
    if mode == "rs" or pair.denoiser is None:
        return pair.classifier.img_size
    size = pair.denoiser.sample_size
    return (size, size)
