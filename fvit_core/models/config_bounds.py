"""Bounds on a model folder's config.json, checked before the model is built (issue 26).

A config names the architecture; building it allocates every parameter at random first, so a
config of depth 100,000 (6.5 GB), 10,000 UNet layers (18 s) or 10^9 diffusion steps (4.6 GB of
schedule) costs its memory before any weight is read. Two checks, both before construction:

- each size is within a generous range that every real model of its kind meets (ViT-g/14 has
  depth 40 and width 1,408; guided-diffusion's 256x256 UNet 2 res-blocks of up to 1,024 channels);
- the weights file could hold the model: a lower bound on the parameter count from the config
  (only the weight matrices and convolution kernels the architecture must have, no biases, no
  norms) at 2 bytes each (16-bit, the smallest precision we load) must not exceed the file's
  size. A real checkpoint always passes it; a small file with a huge config never does, so
  what a hostile config can make us allocate is bounded by the size of its weights file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fvit_core.errors import ModelLoadError

# name -> (lowest, highest) for the ViT arguments of config.json's model_args.
VIT_BOUNDS: dict[str, tuple[float, float]] = {
    "depth": (1, 128), "embed_dim": (1, 16_384), "num_heads": (1, 256), "mlp_ratio": (0.0, 64.0),
    "patch_size": (1, 1024), "img_size": (1, 8192), "num_classes": (1, 1_000_000), "in_chans": (1, 64),
}
# name -> (lowest, highest) for a diffusers UNet2DModel config and its DDPM scheduler.
UNET_BOUNDS: dict[str, tuple[float, float]] = {
    "layers_per_block": (1, 64), "block_out_channels": (1, 16_384), "blocks": (1, 16), "sample_size": (1, 8192),
    "in_channels": (1, 64), "out_channels": (1, 64), "num_train_timesteps": (2, 100_000),
}
BYTES_PER_PARAMETER = 2  # the smallest precision a checkpoint here holds
MAX_CONFIG_BYTES = 1_000_000  # a timm or diffusers config.json is a few kB


def read_config(path: Path) -> dict:
    """A model config.json as a dict: at most MAX_CONFIG_BYTES, a JSON object; one-line errors
    for anything else (bad JSON, an integer of 4,300+ digits, a list)."""
    import json

    from fvit_core.errors import one_line

    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{path} is {size:,} bytes; a model config is a few kB")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer of 4,300+ digits
        raise ModelLoadError(f"cannot read {path}: {one_line(exc, 200)}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data


def _number(config: dict, name: str, default: Any, bounds: dict, where: Path) -> float:
    value = config.get(name, default)
    values = value if isinstance(value, (list, tuple)) else [value]
    low, high = bounds[name]
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) \
                or not low <= item <= high:
            shown = str(item) if len(str(item)) <= 24 else f"a number of {len(str(item))} digits"
            raise ModelLoadError(f"{where}: {name} = {shown} is outside {low:g}..{high:g}; this config.json does not "
                                 "describe a model that can be loaded here")
    return float(max(values)) if values else 0.0


def _check_fits(parameters: float, weights: Path, where: Path) -> None:
    size = weights.stat().st_size
    if parameters * BYTES_PER_PARAMETER > size:
        raise ModelLoadError(f"{where} describes a model of at least {parameters:,.0f} parameters, which "
                             f"{weights.name} ({size:,} bytes) cannot hold; the config and the weights do not match")


def check_vit_config(config: dict, weights: Path, where: Path) -> None:
    """Bounds of a classifier folder's config.json (timm ``model_args``) against its weights file."""
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise ModelLoadError(f"{where}: model_args must be a JSON object")
    # A field the config leaves out comes from the timm architecture's own defaults, unknown
    # here: it counts at its smallest, so the parameter count stays a lower bound.
    depth = _number(args, "depth", 1, VIT_BOUNDS, where)
    width = _number(args, "embed_dim", 1, VIT_BOUNDS, where)
    _number(args, "num_heads", 1, VIT_BOUNDS, where)
    mlp = _number(args, "mlp_ratio", 0.0, VIT_BOUNDS, where)
    patch = _number(args, "patch_size", 1, VIT_BOUNDS, where)
    side = _number(args, "img_size", 1, VIT_BOUNDS, where)
    classes = _number(args, "num_classes", config.get("num_classes", 1), VIT_BOUNDS, where)
    channels = _number(args, "in_chans", 1, VIT_BOUNDS, where)
    # Attention (qkv 3d^2 + projection d^2) and the MLP (2 * ratio * d^2) per block, the patch
    # embedding, the position embedding (one per patch) and the head: all present in a timm ViT.
    parameters = depth * (4 + 2 * mlp) * width**2 + channels * patch**2 * width \
        + (side // max(patch, 1)) ** 2 * width + classes * width
    _check_fits(parameters, weights, where)


def check_unet_config(config: dict, scheduler: dict, weights: Path, where: Path) -> None:
    """Bounds of a denoiser's UNet2DModel config and scheduler config against its weights file."""
    channels = config.get("block_out_channels", [64])
    if not isinstance(channels, (list, tuple)) or not channels:
        raise ModelLoadError(f"{where}: block_out_channels must be a non-empty list")
    _number({"blocks": len(channels)}, "blocks", 1, UNET_BOUNDS, where)
    _number(config, "block_out_channels", [64], UNET_BOUNDS, where)
    layers = _number(config, "layers_per_block", 1, UNET_BOUNDS, where)
    _number(config, "sample_size", 32, UNET_BOUNDS, where)  # an int or (height, width)
    _number(config, "in_channels", 3, UNET_BOUNDS, where)
    _number(config, "out_channels", 3, UNET_BOUNDS, where)
    for source in (config, scheduler):  # the UNet's config may carry it too (null there usually)
        if source.get("num_train_timesteps") is not None:
            _number(source, "num_train_timesteps", 1000, UNET_BOUNDS, where)
    # Each down block has layers_per_block res-blocks, each up block one more, and every
    # res-block ends in a 3x3 convolution from its width to its width: 9 c^2 weights.
    parameters = sum(9 * float(c) ** 2 * (2 * layers + 1) for c in channels)
    _check_fits(parameters, weights, where)
