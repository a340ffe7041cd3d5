"""The vanilla ViT: its prediction and explanation on the images themselves, no smoothing."""

from __future__ import annotations

import numpy as np
import torch

from fvit_core.explanations.attention import explain
from fvit_core.explanations.settings import ExplanationSettings
from fvit_core.models import ModelPair


def vanilla(pair: ModelPair, images: torch.Tensor, *, method: str = ExplanationSettings.method,
            head_fusion: str = ExplanationSettings.head_fusion
            ) -> tuple[np.ndarray, np.ndarray]:
    """The vanilla ViT on a batch (B, 3, H, W) in [0, 1]: (attention (B, P), probabilities (B, C)),
    float64 numpy."""
    exp = explain(pair.classifier, images.to(pair.device), method=method, head_fusion=head_fusion)
    return exp.attention.double().cpu().numpy(), torch.softmax(exp.logits.float(), -1).double().cpu().numpy()
