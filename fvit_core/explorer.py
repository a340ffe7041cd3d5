"""Numbers for the layer and head explorer: per-layer, per-head attention as plain numpy.

The dashboard must not touch torch; this wraps :func:`attention.layer_head_maps` for it.
"""

from __future__ import annotations

import numpy as np
import torch

from .attention import layer_head_maps
from .models import ModelPair


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
        raise ValueError(f"clean and attacked must be (3, H, W) pixel arrays of one size, got {images.shape[1:]}")
    x = torch.from_numpy(images).to(pair.device)
    with torch.inference_mode():
        maps = layer_head_maps(pair.classifier, x)
    return maps.detach().cpu().numpy().astype(np.float64)
