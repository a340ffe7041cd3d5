"""Training data: an image-folder tree (root/<class>/*.jpg) or torchvision's CIFAR10, as uint8 tensors.

The whole training set of a small-image data set fits in memory as uint8 (CIFAR-10: 150 MB), so it
is decoded once and augmented in batches on the training device: no data-loader workers, the same
code on CPU and GPU.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from fvit_core.data.folders import list_image_folder

def _decode(args: tuple[str, int]) -> np.ndarray:
    from PIL import Image

    path, size = args
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)


def load_image_folder(
    root: str | os.PathLike, *, size: int = 32, classes: list[str] | None = None, workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an image-folder tree into (images uint8 (N, 3, size, size), labels int64 (N,), classes)."""
    files, labels, classes = list_image_folder(root, classes)
    workers = workers or max(1, min(16, os.cpu_count() or 1))
    jobs = [(f, size) for f in files]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(pool.map(_decode, jobs, chunksize=512))
    else:
        arrays = [_decode(j) for j in jobs]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.long), classes


def load_training_data(spec: str, *, train: bool = True, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load ``spec``: an image-folder path, or ``torchvision:ROOT`` for torchvision's CIFAR10.

    The torchvision form downloads the data set into ROOT when it is not there yet.
    """
    if spec.startswith("torchvision:"):
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(spec.split(":", 1)[1], train=train, download=True)
        images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        if size != images.shape[-1]:
            images = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True).round().clamp(0, 255).to(torch.uint8)
        return images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes)
    return load_image_folder(spec, size=size)


def augment_batch(images: torch.Tensor, *, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with reflect padding and horizontal flip on a uint8 or float batch (B, 3, H, W).

    Returns float pixels in [0, 1] on the batch's device. One random offset and flip per image.
    """
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
    b, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])  # (B, H)
        cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])  # (B, W)
        bidx = torch.arange(b, device=dev)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(b, generator=generator, device="cpu") < 0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x.contiguous()
