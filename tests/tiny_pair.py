"""A tiny classifier + denoiser pair saved to disk and loaded back through the real loaders."""

from __future__ import annotations

from pathlib import Path

import torch

from fvit_core.models import TINY_UNET_ARGS, ModelPair, load_pair, save_classifier


def save_tiny_pair(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny ViT (timm save_for_hf layout) and a tiny DDPM (save_pretrained layout)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from conftest import TINY_VIT_ARGS, make_tiny_vit

    clf_dir, den_dir = folder / "classifier", folder / "denoiser"
    save_classifier(make_tiny_vit(seed), clf_dir, model_args=TINY_VIT_ARGS)
    torch.manual_seed(seed)
    UNet2DModel(**TINY_UNET_ARGS).save_pretrained(den_dir / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(den_dir / "scheduler")
    return clf_dir, den_dir


def load_tiny_pair(folder: Path) -> ModelPair:
    clf_dir, den_dir = folder / "classifier", folder / "denoiser"
    return load_pair("custom", classifier=str(clf_dir), denoiser=str(den_dir))
