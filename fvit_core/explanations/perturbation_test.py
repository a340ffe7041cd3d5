"""The perturbation test of Chefer et al. 2021 ("Transformer interpretability beyond attention
visualization"), on patches (docs/METHOD.md, section 7).

For each fraction f in 0.1, 0.2, ..., 0.9, remove the round(f * P) patches the explanation ranks
most relevant (positive test) or least relevant (negative test) and record whether the model
still predicts the true label. Removing a patch sets its pixels to the image's per-channel mean
(``fill="mean"``, the default: a neutral colour inside the image's own range) or to 0
(``fill="zero"``, black). The AUC is the trapezoid rule over the fractions (x = f), so with
fractions 0.1..0.9 it lies in [0, 0.8]. A faithful explanation gives a low positive AUC (the
model fails once its evidence is gone) and a high negative AUC (removing what it ignores
changes nothing).

Ranks follow metrics.topk_indices: descending weight, ties to the lower patch index; the
negative test removes patches in the reverse of that order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fvit_core.metrics import topk_indices
from fvit_core.errors import SettingError

FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FILLS: tuple[str, ...] = ("mean", "zero")


def patch_order(attention: np.ndarray) -> np.ndarray:
    """Patch indices from most to least relevant (ties to the lower index)."""
    weights = np.asarray(attention, dtype=np.float64)
    return topk_indices(weights, weights.size)


def removal_counts(num_patches: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """round(f * P) patches per fraction (Python's round: half to even)."""
    return [int(round(f * num_patches)) for f in fractions]


def remove_patches(image: torch.Tensor, patches: Sequence[int], grid: tuple[int, int], fill: str) -> torch.Tensor:
    """A copy of ``image`` (3, H, W) with the listed patches (row-major over ``grid``) filled.

    The image may be in a smoothing space larger than the classifier's input (ModelPair.smoothing_size): a
    patch then covers the pixels that the classifier's resize maps onto it, rows
    round(r H / rows) .. round((r + 1) H / rows) (exactly r * patch .. (r + 1) * patch when the
    grid divides the size)."""
    if fill not in FILLS:
        raise SettingError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")
    rows, cols = grid
    height, width = image.shape[-2], image.shape[-1]
    out = image.clone()
    value = image.mean(dim=(1, 2), keepdim=True) if fill == "mean" else torch.zeros(3, 1, 1, dtype=image.dtype)
    for patch in patches:
        r, c = divmod(int(patch), cols)
        top, bottom = round(r * height / rows), round((r + 1) * height / rows)
        left, right = round(c * width / cols), round((c + 1) * width / cols)
        out[:, top:bottom, left:right] = value.to(image.device)
    return out


def perturbed_batch(image: torch.Tensor, attention: np.ndarray, grid: tuple[int, int], *,
                    fill: str = "mean", fractions: Sequence[float] = FRACTIONS) -> torch.Tensor:
    """(2F, 3, H, W): the F positive-test images, then the F negative-test images."""
    order = patch_order(attention)
    if order.size != grid[0] * grid[1]:
        raise ValueError(f"the explanation has {order.size} patches but the grid is {grid[0]}x{grid[1]}")
    counts = removal_counts(order.size, fractions)
    positive = [remove_patches(image, order[:n], grid, fill) for n in counts]
    negative = [remove_patches(image, order[::-1][:n], grid, fill) for n in counts]
    return torch.stack(positive + negative)


def perturbation_auc(hits: Sequence[float], fractions: Sequence[float] = FRACTIONS) -> float:
    """Trapezoid-rule area under hits(f) (1 = still correct) over the fractions."""
    y = np.asarray(hits, dtype=np.float64)
    x = np.asarray(fractions, dtype=np.float64)
    if y.shape != x.shape:
        raise ValueError(f"need one hit per fraction: {y.size} hits for {x.size} fractions")
    return float(np.trapezoid(y, x))


def split_hits(predictions: Sequence[int], label: int) -> tuple[list[int], list[int]]:
    """Predictions of :func:`perturbed_batch`'s images -> (positive hits, negative hits) as 0/1."""
    hits = [int(int(p) == int(label)) for p in predictions]
    half = len(hits) // 2
    return hits[:half], hits[half:]
