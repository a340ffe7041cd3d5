"""Numbers for the layer and head explorer: per-layer, per-head attention as plain numpy.

The dashboard must not touch torch; this wraps :func:`attention.layer_head_maps` for it.
"""

from __future__ import annotations

import numpy as np
import torch

from fvit_core.errors import InputError, SettingError
from fvit_core.explanations.attention import layer_head_maps
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.method.settings import SmoothingSettings
from fvit_core.models import ModelPair


def layer_head_attention(pair: ModelPair, clean: np.ndarray, attacked: np.ndarray) -> np.ndarray:
    """[CLS]-row attention on the patches of the vanilla ViT for both images.

    Args:
        pair: loaded models (only the classifier is used; read only, thread safe).
        clean, attacked: (3, H, W) pixels in [0, 1] at the classifier's input size (as in
            ``AnalysisResult.clean_image`` / ``attacked_image``).

    Returns float64 (2, layers, heads, P): index 0 clean, 1 attacked. Each (layer, head) row is
    the softmax weight on the patch columns (not renormalised; the [CLS] column holds the rest).
    """
    images = np.stack([np.asarray(clean, dtype=np.float32), np.asarray(attacked, dtype=np.float32)])
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"clean and attacked must be (3, H, W) pixel arrays of one size, got {images.shape[1:]}")
    x = torch.from_numpy(images).to(pair.device)
    with torch.inference_mode():
        maps = layer_head_maps(pair.classifier, x)
    return maps.detach().cpu().numpy().astype(np.float64)


def smoothed_layer_head_attention(pair: ModelPair, clean: np.ndarray, attacked: np.ndarray, *, mode: str,
                                  sigma: float, n_samples: int, seed: int,
                                  multistep_steps: int = SmoothingSettings.multistep_steps,
                                  batch_size: int = 64) -> np.ndarray:
    """The Faithful ViT's per-layer, per-head [CLS] attention: the mean over ``n_samples`` noise
    draws of the ViT's maps on the denoised noisy image (the same inputs as the FViT's smoothing:
    ``mode`` dds / multistep denoise x + N(0, sigma^2), rs classifies the clipped noisy image,
    denoise-only denoises x once without noise).

    Returns float64 (2, layers, heads, P) like :func:`layer_head_attention`. Seeded: the clean
    and the attacked image get independent draws from ``torch.Generator().manual_seed(seed)``.
    """
    if not sigma > 0 or n_samples < 1:
        raise SettingError(f"sigma must be > 0 and n_samples >= 1, got sigma={sigma!r}, n_samples={n_samples!r}")
    fvit = FaithfulViT.from_pair(pair, sigma, mode=mode, multistep_steps=multistep_steps)
    images = [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (clean, attacked)]
    generator = torch.Generator().manual_seed(int(seed))
    n = fvit.draws_per_image(int(n_samples))
    out = []
    with torch.inference_mode():
        for image in images:
            total = None
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                shape = (count, *image.shape)
                noise = torch.zeros(shape) if mode == "denoise-only" else fvit.noise(shape, generator)
                noisy = (image[None] + noise).to(pair.device)
                inputs = fvit.base_input(noisy, generator if mode == "multistep" else None)
                maps = layer_head_maps(pair.classifier, inputs.float()).double().sum(dim=0)
                total = maps if total is None else total + maps
            out.append((total / n).cpu().numpy())
    return np.stack(out).astype(np.float64)
