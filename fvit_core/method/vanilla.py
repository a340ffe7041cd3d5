"""The vanilla ViT: its prediction and explanation on the images themselves, no smoothing."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from fvit_core.explanations.attention import explain
from fvit_core.explanations.settings import ExplanationSettings
from fvit_core.models import ModelPair


class VanillaViews(NamedTuple):
    """The vanilla ViT on a batch: (B, P) attention (rows sum to 1), (B, C) probabilities and,
    for a signed method, (B, P) signed relevances (else None); float64 numpy."""

    attention: np.ndarray
    probs: np.ndarray
    relevance: np.ndarray | None = None


def vanilla(pair: ModelPair, images: torch.Tensor, *, method: str = ExplanationSettings.method,
            head_fusion: str = ExplanationSettings.head_fusion, target: int | None = ExplanationSettings.target
            ) -> VanillaViews:
    """The vanilla ViT on a batch (B, 3, H, W) in [0, 1], explaining class ``target`` (None: each
    image's predicted class)."""
    exp = explain(pair.classifier, images.to(pair.device), method=method, head_fusion=head_fusion, target=target)
    relevance = None if exp.relevance is None else exp.relevance.double().cpu().numpy()
    return VanillaViews(exp.attention.double().cpu().numpy(), torch.softmax(exp.logits.float(), -1).double().cpu().numpy(),
                        relevance)
