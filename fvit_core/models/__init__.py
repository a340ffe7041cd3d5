"""The models: a timm Vision Transformer that takes [0, 1] pixels, and a diffusers DDPM denoiser.

Conventions (docs/METHOD.md, section 2): every model here takes images as float tensors in
[0, 1] pixel space, shape (B, 3, H, W). ``vit`` (the classifier), ``denoiser``, ``pairs`` (named
classifier / denoiser pairs, the models folder and its guard), ``common`` (device, offline rule,
weight checks), ``adm`` (guided-diffusion checkpoints rebuilt from diffusers blocks). The names
below are the package's API.
"""

from fvit_core.errors import ModelLoadError
from fvit_core.models.common import ASSETS_DIR, MODELS_DIR, check_device, check_finite_weights, hub_offline
from fvit_core.models.denoiser import DEFAULT_UNET_ARGS, TINY_UNET_ARGS, Denoiser, load_denoiser
from fvit_core.models.pairs import (CPU_SECONDS_PER_SAMPLE_REALSIZE, MODEL_PAIRS, ModelPair, ModelPairSpec, load_pair,
                                    models_dir, resolve_model_dir)
from fvit_core.models.vit import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DEFAULT_VIT_ARCH, DEFAULT_VIT_ARGS,
                                  PixelViT, create_vit, disable_fused_attention, imagenet_class_names, load_classifier,
                                  save_classifier)

__all__ = [
    "ASSETS_DIR", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CPU_SECONDS_PER_SAMPLE_REALSIZE",
    "DEFAULT_UNET_ARGS", "DEFAULT_VIT_ARCH", "DEFAULT_VIT_ARGS", "Denoiser", "MODELS_DIR", "MODEL_PAIRS", "ModelLoadError",
    "ModelPair", "ModelPairSpec", "PixelViT", "TINY_UNET_ARGS", "check_device", "check_finite_weights", "create_vit",
    "disable_fused_attention", "hub_offline", "imagenet_class_names", "load_classifier", "load_denoiser", "load_pair",
    "models_dir", "resolve_model_dir", "save_classifier",
]
