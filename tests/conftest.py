"""Shared fixtures: tiny random models that keep the suite fast on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from fvit_core.models import CIFAR10_MEAN, CIFAR10_STD, PixelViT, create_vit

# Tiny models gain nothing from intra-op parallelism, and OpenMP workers spin-waiting for a core
# made a 2 ms forward pass take 200 ms whenever another process kept both CPUs busy.
torch.set_num_threads(1)

TINY_VIT_ARGS: dict = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def make_tiny_vit(seed: int = 0) -> PixelViT:
    """A seeded PixelViT: 32x32 input, 8x8 patches (P = 16), 2 blocks, 2 heads, 10 classes.

    Position embeddings and query/key/value weights are re-drawn with larger std than timm's
    init (0.02), so random attention is far from uniform and the explanation methods disagree
    measurably.
    """
    torch.manual_seed(seed)
    vit = create_vit("vit_tiny_patch16_224", num_classes=10, model_args=TINY_VIT_ARGS)
    with torch.no_grad():
        vit.pos_embed.normal_(0.0, 0.5)
        vit.cls_token.normal_(0.0, 0.5)
        for block in vit.blocks:
            block.attn.qkv.weight.normal_(0.0, 0.2)
    return PixelViT(vit, mean=CIFAR10_MEAN, std=CIFAR10_STD)


@pytest.fixture
def tiny_vit() -> PixelViT:
    return make_tiny_vit(0)


@pytest.fixture(scope="session")
def tiny_pair_dir(tmp_path_factory):
    """Folder with classifier/ and denoiser/ of a tiny pair, saved through the real savers."""
    from tiny_pair import save_tiny_pair

    folder = tmp_path_factory.mktemp("tiny_pair")
    save_tiny_pair(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pair(tiny_pair_dir):
    """The tiny pair loaded back through load_pair (timm local-dir + diffusers from_pretrained)."""
    from tiny_pair import load_tiny_pair

    return load_tiny_pair(tiny_pair_dir)
