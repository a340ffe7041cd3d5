"""The classifier: a timm Vision Transformer that takes [0, 1] pixels (docs/METHOD.md, section 2).

The checkpoint's normalisation (mean/std) and the resize to the classifier's input size are its
first layer (:attr:`PixelViT.input_layer`), so attacks, noise and certified radii all live in
pixel space. Classifiers come from timm, by registry name (``pretrained=True`` downloads from the
hub, only when the caller asks for it) or from a local folder saved with
``timm.models.save_for_hf`` (``config.json`` + ``model.safetensors``), loaded through
``timm.create_model("local-dir:...")``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from fvit_core.errors import ModelLoadError, one_line
from fvit_core.data.pixels import resize_pixels
from fvit_core.models.config_bounds import check_vit_config, read_config
from fvit_core.models.common import check_finite_weights, check_safetensors, hub_offline, offline_reason


CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)


CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


class PixelViT(nn.Module):
    """A timm VisionTransformer whose first layer normalises [0, 1] pixels.

    ``forward(x)`` maps pixels ``x`` of shape (B, 3, H, W) in [0, 1] to logits (B, num_classes).
    Its first layers are :meth:`input_layer`: pixels at another size than :attr:`img_size` (the
    smoothing space of a larger denoiser, docs/METHOD.md) are resized to it, then normalised.
    The wrapped ``vit`` is in eval mode with fused attention switched off in every block, so the
    attention weights are materialised and can be captured (docs/METHOD.md, section 4).
    """

    def __init__(
        self,
        vit: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
            raise ModelLoadError(
                f"{type(vit).__name__} is not a timm VisionTransformer (no blocks / patch_embed); "
                "pick a ViT architecture such as 'vit_tiny_patch16_224'."
            )
        self.vit = vit
        mean_t, std_t = _channel_stats(mean, "mean"), _channel_stats(std, "std")
        if not bool((std_t > 0).all()):
            raise ModelLoadError(f"normalisation std must be positive, got {std_t.tolist()}; fix pretrained_cfg in config.json")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))
        n = int(vit.num_classes)
        self.class_names: tuple[str, ...] = (
            tuple(class_names) if class_names is not None and len(class_names) == n
            else tuple(f"class {i}" for i in range(n))
        )
        disable_fused_attention(vit)
        self.eval()

    def input_layer(self, x: torch.Tensor) -> torch.Tensor:
        """What the ViT's patch embedding receives: pixels (B, 3, H, W) in [0, 1], resized to
        :attr:`img_size` when they differ (bicubic, antialiased: data.pixels.resize_pixels), then
        normalised with the checkpoint's mean and std. Differentiable."""
        return (resize_pixels(x, self.img_size) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(self.input_layer(x))

    @property
    def num_classes(self) -> int:
        return int(self.vit.num_classes)

    @property
    def img_size(self) -> tuple[int, int]:
        """Input (H, W) in pixels the ViT was built for."""
        return tuple(int(s) for s in self.vit.patch_embed.img_size)  # type: ignore[return-value]

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols); the number of focal patches P is rows * cols."""
        return tuple(int(s) for s in self.vit.patch_embed.grid_size)  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens ([CLS], registers); attention columns to drop."""
        return int(getattr(self.vit, "num_prefix_tokens", 1))

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.vit.blocks[0].attn.num_heads)


def _channel_stats(values: Sequence[float], name: str) -> torch.Tensor:
    """Per-channel normalisation statistics: 3 finite numbers (a config.json may hold anything)."""
    try:
        tensor = torch.tensor(values, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"normalisation {name} must be 3 numbers (one per RGB channel), got {values!r}") from exc
    if tensor.numel() != 3 or not bool(torch.isfinite(tensor).all()):
        raise ModelLoadError(f"normalisation {name} must be 3 finite numbers (one per RGB channel), got {values!r}")
    return tensor


def disable_fused_attention(vit: nn.Module) -> int:
    """Switch timm's fused scaled-dot-product attention off in every block.

    Fused attention never materialises the attention matrix, so hooks on ``attn_drop`` would
    fire zero times. Returns the number of attention modules changed.
    """
    changed = 0
    for module in vit.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "attn_drop"):
            module.fused_attn = False
            changed += 1
    if changed == 0:
        raise ModelLoadError("no timm attention module found: attention cannot be captured")
    return changed


def create_vit(
    architecture: str,
    *,
    num_classes: int,
    img_size: int | tuple[int, int] | None = None,
    model_args: dict | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """Build a timm VisionTransformer by registry name, optionally with hub weights.

    timm silently re-initialises the classification head when ``num_classes`` differs from the
    pretrained checkpoint's; that would give a model with random predictions and plausible
    attention. We refuse it instead, with a message, so nobody analyses an untrained head.
    """
    import timm

    if not timm.is_model(architecture):
        raise ModelLoadError(f"unknown timm model {architecture!r}; see timm.list_models('vit_*')")
    kwargs = dict(model_args or {})
    if img_size is not None:
        kwargs["img_size"] = img_size
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(architecture)
        hub_classes = getattr(cfg, "num_classes", None) if cfg is not None else None
        if hub_classes is not None and hub_classes != num_classes:
            raise ModelLoadError(
                f"{architecture} was pretrained with {hub_classes} classes but num_classes="
                f"{num_classes} was asked: timm would re-initialise the head at random. Use "
                f"num_classes={hub_classes}, or fine-tune and load a local checkpoint."
            )
    try:
        vit = timm.create_model(architecture, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except Exception as exc:  # timm raises RuntimeError / OSError / HF errors for hub problems
        hint = f" ({offline_reason()}: only models already in the hub cache load)" if pretrained and hub_offline() else ""
        raise ModelLoadError(f"could not create {architecture!r}{hint}: {one_line(exc, 400)}") from exc
    if pretrained:
        check_finite_weights(vit, f"classifier {architecture}")
    return vit


def save_classifier(model: PixelViT, folder: str | os.PathLike, *, model_args: dict) -> Path:
    """Save a classifier as timm does for the hub: ``config.json`` + ``model.safetensors``.

    The folder then loads with ``timm.create_model("local-dir:FOLDER", pretrained=True)`` and
    with :func:`load_classifier`. Mean, std and class names go into ``pretrained_cfg``.
    """
    from timm.models import save_for_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = model.img_size
    model_config = {
        "num_classes": model.num_classes,
        "pretrained_cfg": {
            "mean": [float(v) for v in model.mean.flatten()],
            "std": [float(v) for v in model.std.flatten()],
            "input_size": [3, rows, cols],
            "num_classes": model.num_classes,
            "label_names": list(model.class_names),
        },
    }
    save_for_hf(model.vit, folder, model_config=model_config, model_args=model_args, safe_serialization=True)
    return folder


def load_classifier(
    source: str | os.PathLike,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    pretrained: bool = False,
    class_names: Sequence[str] | None = None,
    random_weights: bool = False,
) -> PixelViT:
    """Load a ViT classifier from a local folder, a local safetensors file or a timm name.

    Args:
        source: a folder saved by :func:`save_classifier` (config.json + model.safetensors), a
            ``.safetensors`` file (architecture then read from a config.json beside it), or a
            timm registry name such as ``vit_base_patch16_224`` (hub weights with
            ``pretrained=True``).
        num_classes, img_size: override the architecture (registry names only).
        pretrained: download weights from the hub for a registry name.
        class_names: labels for the classes (default: from the checkpoint, else "class i").
        random_weights: build a registry name with random weights (for tests and training);
            without it, a registry name without ``pretrained`` is refused, because analysing a
            randomly initialised ViT gives chance-level predictions that look like results.
    """
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ModelLoadError(f"weights file not found: {path}")
        path = path.parent
    if path.is_dir():
        return _load_classifier_folder(path, class_names=class_names)
    if os.sep in str(source) or str(source).startswith("."):
        raise ModelLoadError(f"classifier folder not found: {source}")
    import timm

    if not pretrained and not random_weights:
        if not timm.is_model(str(source)):
            raise ModelLoadError(f"unknown timm model {str(source)!r}; see timm.list_models('vit_*')")
        raise ModelLoadError(
            f"classifier {str(source)!r} is a timm model name: without downloading, its weights would be random "
            "(chance-level predictions). Allow downloads to use the hub's weights (CLI: --allow-download; "
            "dashboard: FVIT_ALLOW_DOWNLOAD=1), or give a folder with config.json + model.safetensors"
        )
    vit = create_vit(str(source), num_classes=num_classes or 1000, img_size=img_size, pretrained=pretrained)
    data_cfg = timm.data.resolve_data_config({}, model=vit)
    return PixelViT(vit, mean=data_cfg["mean"], std=data_cfg["std"],
                    class_names=class_names or imagenet_class_names(vit))


def _check_every_tensor_loaded(vit: torch.nn.Module, weights_file: Path) -> None:
    """Refuse a model with a parameter or buffer that its weights file does not hold: timm loads
    non-strictly when config.json says ``pretrained_strict: false``, which would leave such a
    layer at its random initialisation with no error (issue 26). Reads only the file's header."""
    from safetensors import safe_open

    with safe_open(str(weights_file), framework="pt") as handle:
        stored = set(handle.keys())
    # Buffers that are not saved (persistent=False) are rebuilt by the model itself.
    expected = set(vit.state_dict().keys())
    missing = sorted(expected - stored)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(f"{weights_file} lacks {len(missing)} tensor(s) of the model in its config.json ({shown}); "
                             "those layers would run at random initialisation: the file is truncated or belongs to "
                             "another architecture")


def _load_classifier_folder(folder: Path, *, class_names: Sequence[str] | None) -> PixelViT:
    import timm

    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise ModelLoadError(
                f"{folder} is not a classifier folder: {needed.name} is missing "
                "(expected config.json + model.safetensors, as written by timm's save_for_hf)"
            )
    config = read_config(config_file)
    check_safetensors(weights_file)
    check_vit_config(config, weights_file, config_file)  # before timm builds (allocates) the model
    try:
        # timm's own local-folder path: reads config.json (architecture, model_args) and the
        # safetensors weights; strict loading, so a mismatched file fails loudly.
        vit = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load classifier from {folder}: {one_line(exc, 400)}") from exc
    _check_every_tensor_loaded(vit, weights_file)
    check_finite_weights(vit, f"classifier {folder}")
    pcfg = config.get("pretrained_cfg", {})
    names = class_names or pcfg.get("label_names") or config.get("label_names")
    if names is None:
        names = imagenet_class_names(vit)
    return PixelViT(
        vit,
        mean=pcfg.get("mean", (0.5, 0.5, 0.5)),
        std=pcfg.get("std", (0.5, 0.5, 0.5)),
        class_names=names,
    )


# The shipped classifier: a ViT built through timm's registry with CIFAR-sized arguments.
# Depth 6, width 192, 3 heads, patch 4 -> 64 focal patches, 1.8M parameters, 0.23 GFLOP/image.
DEFAULT_VIT_ARCH = "vit_tiny_patch16_224"


DEFAULT_VIT_ARGS: dict = {
    "img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3, "mlp_ratio": 2.0,
}


def imagenet_class_names(vit: nn.Module) -> tuple[str, ...] | None:
    """Class names from timm's own ImageNet metadata for a model whose head is an ImageNet subset
    (1000 or 21k classes, timm.data.infer_imagenet_subset), the first synonym of each ("tench",
    "goldfish"); None for any other head."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(vit)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(int(vit.num_classes)))
