"""A small ViT whose weights depend only on a seed, not on timm's initialisation order.

Used by tests/test_attr_rollout.py and scripts/attr_rollout_reference.py: the fixture
tests/fixtures/attr_rollout_reference.npz holds the reference's outputs for this model, so the
weights must come out the same wherever the test runs. timm's own init draws in an order a timm
release may change; here every parameter is drawn from one seeded generator in sorted-name order,
in float64, then cast (CPU torch.randn with a seeded generator is stable across releases).

12 heads because the reference (yxheartipp/attr-rollout, ViT_explanation_generator.IG.generate_ig)
loops over a hard-coded 12 heads.
"""

from __future__ import annotations

import torch

from fvit_core.models import CIFAR10_MEAN, CIFAR10_STD, PixelViT, create_vit

# 16x16 input, 4x4 patches (P = 16, T = 17 tokens), 3 blocks of 12 heads of dimension 4.
SEEDED_VIT_ARGS: dict = {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 3, "num_heads": 12,
                         "mlp_ratio": 2.0, "qkv_bias": True}
SEEDED_VIT_CLASSES = 10


def make_seeded_vit(seed: int = 0) -> PixelViT:
    """The seeded PixelViT. LayerNorm gains 1 + 0.1 z, biases 0.1 z, position codes and [CLS]
    0.5 z, qkv weights 0.3 z (attention far from uniform), other weights z / sqrt(fan_in)."""
    vit = create_vit("vit_tiny_patch16_224", num_classes=SEEDED_VIT_CLASSES, model_args=SEEDED_VIT_ARGS)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(vit.named_parameters()):
            z = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            if "norm" in name and name.endswith(".weight"):
                value = 1.0 + 0.1 * z
            elif name.endswith(".bias"):
                value = 0.1 * z
            elif name in ("pos_embed", "cls_token"):
                value = 0.5 * z
            elif name.endswith("attn.qkv.weight"):
                value = 0.3 * z
            else:
                value = z / (param[0].numel() ** 0.5)  # fan_in: one output's inputs
            param.copy_(value.to(param.dtype))
    return PixelViT(vit, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def weight_checksum(model: PixelViT) -> float:
    """Sum of |w| over all parameters in float64: tells a changed model from a changed method."""
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))
