"""Model loading: a timm Vision Transformer that takes [0, 1] pixels, and a diffusers DDPM denoiser.

Conventions (docs/METHOD.md, section 2): every model here takes images as float tensors in
[0, 1] pixel space, shape (B, 3, H, W). The classifier's normalisation (mean/std of its
checkpoint) is its first layer, so attacks, noise and certified radii all live in pixel space.

Loaders stay real:
- classifiers come from timm, by registry name (``pretrained=True`` downloads from the hub, only
  when the caller asks for it) or from a local folder saved with ``timm.models.save_for_hf``
  (``config.json`` + ``model.safetensors``), loaded through ``timm.create_model("local-dir:...")``;
- denoisers come from diffusers ``from_pretrained`` (a hub id or a local folder with ``unet/`` and
  ``scheduler/`` sub-folders, or a flat folder as ``google/ddpm-cifar10-32`` is laid out).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from fvit_core.errors import ModelLoadError, one_line
from fvit_core.method.pixel_space import resize_pixels

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
MODELS_DIR = ASSETS_DIR / "models"

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------


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
        :attr:`img_size` when they differ (bicubic, antialiased: pixel_space.resize_pixels), then
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


def check_finite_weights(module: nn.Module, what: str) -> None:
    """Refuse a model with NaN or infinite parameters or buffers (a corrupted or diverged checkpoint).

    Such a model would turn every result into NaN; saying so at load time names the culprit.
    """
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(
                f"{what} has NaN or infinite values in {name!r}: the checkpoint is corrupted or its training "
                "diverged; re-export or re-download it"
            )


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no hub requests.

    huggingface_hub reads the variable once, at import; it is read again here so that a value set
    before any hub library was imported and one set later are both honoured by our loaders.
    """
    values = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return values in {"1", "ON", "YES", "TRUE"}


def check_device(device: str | torch.device) -> torch.device:
    """Parse a device name and check that this machine has it; ModelLoadError otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available on this machine; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r} asked for, but MPS is not available on this machine; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return parsed


def resolve_model_dir(name: str, models_dir: str | os.PathLike) -> Path:
    """The folder ``models_dir/name`` for a model chosen by name, refusing anything that escapes it.

    For servers: a user picks a model by name, never by path. ``name`` must be one plain folder
    name (no separators, no ``..``, not absolute, not hidden); the folder must exist, and neither
    it nor anything inside it (two levels deep, as classifier and diffusers folders are laid out)
    may be a symlink that resolves outside ``models_dir``. Returns the resolved path.

    Raises:
        ModelLoadError: with a message naming the models directory.
    """
    root = Path(models_dir).expanduser().resolve()
    text = name if isinstance(name, str) else ""
    bad = (not text or text != text.strip() or text in (".", "..") or text.startswith(".") or "\x00" in text
           or any(sep in text for sep in ("/", "\\", os.sep)) or Path(text).is_absolute() or Path(text).drive)
    if bad:
        raise ModelLoadError(f"{name!r} is not a model name: pick one of the folders in the models directory {root}")
    if not root.is_dir():
        raise ModelLoadError(f"the models directory {root} does not exist")
    folder = (root / text).resolve()
    if not folder.is_relative_to(root) or folder == root:
        raise ModelLoadError(f"{name!r} leads outside the models directory {root}")
    if not folder.is_dir():
        raise ModelLoadError(f"no model folder {name!r} in the models directory {root}")
    for inner in [folder, *folder.iterdir(), *(p for d in folder.iterdir() if d.is_dir() for p in d.iterdir())]:
        if not inner.resolve().is_relative_to(root):
            raise ModelLoadError(f"{inner.relative_to(root)!s} links outside the models directory {root}; refused")
    return folder


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
        hint = " (HF_HUB_OFFLINE is set: only models already in the hub cache load)" if pretrained and hub_offline() else ""
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


def _load_classifier_folder(folder: Path, *, class_names: Sequence[str] | None) -> PixelViT:
    import timm

    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise ModelLoadError(
                f"{folder} is not a classifier folder: {needed.name} is missing "
                "(expected config.json + model.safetensors, as written by timm's save_for_hf)"
            )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {config_file}: {exc}") from exc
    _check_safetensors(weights_file)
    try:
        # timm's own local-folder path: reads config.json (architecture, model_args) and the
        # safetensors weights; strict loading, so a mismatched file fails loudly.
        vit = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load classifier from {folder}: {one_line(exc, 400)}") from exc
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


def _check_safetensors(path: Path) -> None:
    """Fail with a clear message if ``path`` is not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a valid safetensors file (truncated or corrupted?): {one_line(exc, 400)}") from exc
    if not keys:
        raise ModelLoadError(f"{path} holds no tensors")


# --------------------------------------------------------------------------------------------
# Denoiser
# --------------------------------------------------------------------------------------------


@dataclass
class Denoiser:
    """A DDPM noise-prediction network with its scheduler.

    ``unet(x_t, t).sample`` predicts the noise eps in diffusion space [-1, 1];
    ``alphas_cumprod[t]`` is abar_t, the cumulative product of (1 - beta_s) for s <= t.
    """

    unet: nn.Module
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    sample_size: int
    source: str = ""
    scheduler_config: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Denoiser":
        self.unet.to(device)
        return self


def load_denoiser(source: str | os.PathLike, *, allow_download: bool = False) -> Denoiser:
    """Load a diffusers UNet2DModel + DDPMScheduler with ``from_pretrained``.

    Args:
        source: a local folder (``unet/`` + ``scheduler/`` sub-folders as written by
            ``save_pretrained``, or a flat folder with the UNet's config.json and
            scheduler_config.json) or a hub id such as ``google/ddpm-cifar10-32``.
        allow_download: hub ids are fetched only when this is True (and HF_HUB_OFFLINE is unset).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(source).expanduser()
    local = path.is_dir()
    if not local and not allow_download:
        raise ModelLoadError(
            f"denoiser folder not found: {source}. To download a hub model such as "
            "google/ddpm-cifar10-32, allow downloads (CLI: --allow-download)."
        )
    where = str(path) if local else str(source)
    unet_sub = "unet" if (not local or (path / "unet").is_dir()) else None
    sched_sub = "scheduler" if (not local or (path / "scheduler").is_dir()) else None
    if local:
        _check_denoiser_weights(path / unet_sub if unet_sub else path)
    offline = hub_offline()
    kwargs = {"local_files_only": local or offline}
    try:
        # Safetensors only, local or hub: a .bin file is a pickle (diffusers would torch.load it,
        # with weights_only=True, but we never rely on unpickling). Loading info lets us refuse
        # a file whose tensors do not match the architecture instead of initialising the gaps
        # at random, which diffusers does with only a warning.
        unet, info = UNet2DModel.from_pretrained(where, subfolder=unet_sub, use_safetensors=True,
                                                 low_cpu_mem_usage=False, output_loading_info=True, **kwargs)
        scheduler = DDPMScheduler.from_pretrained(where, subfolder=sched_sub, **kwargs)
    except Exception as exc:
        hint = " (HF_HUB_OFFLINE is set: only models already in the hub cache load)" if offline and not local else ""
        raise ModelLoadError(f"cannot load denoiser from {where}{hint}: {one_line(exc, 400)}") from exc
    problems = {kind: info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)}
    if problems:
        detail = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(map(str, keys[:5]))}{' ...' if len(keys) > 5 else ''}"
                           for kind, keys in problems.items())
        raise ModelLoadError(f"denoiser weights in {where} do not match its config.json ({detail}); "
                             "the checkpoint is truncated or belongs to another architecture")
    check_finite_weights(unet, f"denoiser {where}")
    abar = scheduler.alphas_cumprod.to(torch.float64)
    if abar.numel() < 2 or not bool(torch.isfinite(abar).all()) or bool((abar <= 0).any()) or bool((abar > 1).any()):
        raise ModelLoadError(f"the noise schedule in {where} is invalid (alphas_cumprod must lie in (0, 1]); "
                             "check beta_start / beta_end in scheduler_config.json")
    unet.eval()
    return Denoiser(
        unet=unet,
        alphas_cumprod=abar,
        num_train_timesteps=int(scheduler.config.num_train_timesteps),
        sample_size=int(unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]),
        source=where,
        scheduler_config=dict(scheduler.config),
    )


def _check_denoiser_weights(folder: Path) -> None:
    """A local UNet folder must hold safetensors weights; pickled .bin / .pt files are refused."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")) if folder.is_dir() else []
    if pickled:
        raise ModelLoadError(
            f"{folder} holds only pickled weights ({', '.join(pickled)}), which are never loaded; convert them "
            "once in a trusted environment: UNet2DModel.from_pretrained(FOLDER).save_pretrained(FOLDER, "
            "safe_serialization=True)"
        )


# --------------------------------------------------------------------------------------------
# Default architectures (the shipped CIFAR-10 pair) and the registry of named pairs
# --------------------------------------------------------------------------------------------

# The shipped classifier: a ViT built through timm's registry with CIFAR-sized arguments.
# Depth 6, width 192, 3 heads, patch 4 -> 64 focal patches, 1.8M parameters, 0.23 GFLOP/image.
DEFAULT_VIT_ARCH = "vit_tiny_patch16_224"
DEFAULT_VIT_ARGS: dict = {
    "img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3, "mlp_ratio": 2.0,
}

# The shipped denoiser: a 4-level UNet (2.7M parameters, 0.25 GFLOP/image) chosen for CPU speed;
# wider first levels doubled the cost for little gain (docs in the model card).
DEFAULT_UNET_ARGS: dict = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
    "block_out_channels": (16, 32, 64, 128),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8, "attention_head_dim": 32,
}


# A tiny UNet of the same family, for tests and quick experiments (0.1M parameters).
TINY_UNET_ARGS: dict = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
    "block_out_channels": (8, 16), "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"), "norm_num_groups": 4,
}


# benchmarks/bench_realsize.py on the 2-core machine, float32 (docs/PERFORMANCE.md, "Real size").
CPU_SECONDS_PER_SAMPLE_REALSIZE = 23.0


def models_dir() -> Path:
    """The folder named pairs and the dashboard read local models from: $FVIT_MODELS_DIR, else
    the shipped assets/models."""
    return Path(os.environ.get("FVIT_MODELS_DIR") or MODELS_DIR).expanduser().resolve()


@dataclass(frozen=True)
class ModelPairSpec:
    """Where a named (classifier, denoiser) pair comes from.

    ``classifier`` and ``denoiser`` are folders: absolute paths, or names of sub-folders of the
    models directory (:func:`models_dir`, read when the pair is loaded). A missing classifier
    folder is replaced by timm's ``hub_classifier`` with hub weights when downloads are allowed;
    ``how_to_get`` tells the user how to put the missing files in place.
    """

    name: str
    classifier: str
    denoiser: str
    description: str = ""
    hub_classifier: str | None = None
    how_to_get: str = ""
    training_data: str = ""  # what the classifier learnt from, as shown beside the dashboard's upload
    # Measured seconds per DDS sample on the project's 2-core CPU in float32 (docs/PERFORMANCE.md),
    # for pairs too large to run interactively there; None when a sample takes a few milliseconds.
    cpu_seconds_per_sample: float | None = None

    def classifier_path(self) -> Path:
        return models_dir() / self.classifier if not Path(self.classifier).is_absolute() else Path(self.classifier)

    def denoiser_path(self) -> Path:
        return models_dir() / self.denoiser if not Path(self.denoiser).is_absolute() else Path(self.denoiser)

    def available(self) -> bool:
        """Whether both folders are in place (no download needed)."""
        return self.classifier_path().is_dir() and self.denoiser_path().is_dir()


MODEL_PAIRS: dict[str, ModelPairSpec] = {
    "default": ModelPairSpec(
        name="default",
        classifier=str(MODELS_DIR / "cifar10-vit"),
        denoiser=str(MODELS_DIR / "cifar10-ddpm"),
        description="Shipped CIFAR-10 pair: ViT (patch 4, 64 patches) + DDPM UNet, trained by this project.",
        training_data="the CIFAR-10 training split (50,000 photos of 32×32 px)",
    ),
    # The paper's setting (Hu et al. 2024; Carlini et al. 2023): docs/REALSIZE.md says how to get it.
    "imagenet-vit-b16": ModelPairSpec(
        name="imagenet-vit-b16",
        classifier="imagenet-vit-b16",
        denoiser="imagenet-adm-256",
        description="The paper's setting: timm's ViT-B/16 (ImageNet-1k, 224 px, 196 patches) + OpenAI's "
                    "unconditional 256x256 guided-diffusion UNet (552M parameters); DDS at 256 px.",
        hub_classifier="vit_base_patch16_224.augreg2_in21k_ft_in1k",
        how_to_get="classifier: `fvit save-classifier vit_base_patch16_224.augreg2_in21k_ft_in1k "
                   "$FVIT_MODELS_DIR/imagenet-vit-b16 --allow-download` (or pass --allow-download to use the hub "
                   "copy); denoiser: download 256x256_diffusion_uncond.pt (linked from openai/guided-diffusion's "
                   "README) and run `fvit convert-adm 256x256_diffusion_uncond.pt $FVIT_MODELS_DIR/imagenet-adm-256`; "
                   "docs/REALSIZE.md has the steps",
        training_data="ImageNet-1k (1000 classes, 224x224 px; denoiser trained on ImageNet at 256x256 px)",
        cpu_seconds_per_sample=CPU_SECONDS_PER_SAMPLE_REALSIZE,
    ),
}


@dataclass
class ModelPair:
    """A loaded classifier and denoiser that DDS composes."""

    classifier: PixelViT
    denoiser: Denoiser | None
    name: str = "custom"

    @property
    def device(self) -> torch.device:
        return self.classifier.mean.device

    def to(self, device: torch.device | str) -> "ModelPair":
        self.classifier.to(device)
        if self.denoiser is not None:
            self.denoiser.to(device)
        return self


def load_pair(
    name: str = "default",
    *,
    classifier: str | None = None,
    denoiser: str | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
) -> ModelPair:
    """Load a named pair from :data:`MODEL_PAIRS`, with either model optionally replaced.

    ``classifier`` and ``denoiser`` accept anything :func:`load_classifier` and
    :func:`load_denoiser` accept; hub downloads happen only with ``allow_download``.
    """
    if name not in MODEL_PAIRS and (classifier is None or denoiser is None):
        raise ModelLoadError(f"unknown model pair {name!r}; known: {', '.join(MODEL_PAIRS)}")
    check_device(device)
    spec = MODEL_PAIRS.get(name)
    if classifier is not None:
        clf = load_classifier(classifier, pretrained=allow_download and not Path(classifier).exists())
    else:
        clf = _pair_classifier(spec, allow_download)  # type: ignore[arg-type]
    if denoiser is not None:
        den = load_denoiser(denoiser, allow_download=allow_download)
    else:
        folder = spec.denoiser_path()  # type: ignore[union-attr]
        if not folder.is_dir():
            raise ModelLoadError(f"the denoiser of the {spec.name!r} pair is not in {folder}; {spec.how_to_get}")  # type: ignore[union-attr]
        den = load_denoiser(folder)
    label = name if classifier is None and denoiser is None else "custom"
    return ModelPair(classifier=clf, denoiser=den, name=label).to(device)


def _pair_classifier(spec: ModelPairSpec, allow_download: bool) -> PixelViT:
    folder = spec.classifier_path()
    if folder.is_dir():
        return load_classifier(folder)
    if spec.hub_classifier is not None and allow_download:
        return load_classifier(spec.hub_classifier, pretrained=True)
    raise ModelLoadError(f"the classifier of the {spec.name!r} pair is not in {folder}; {spec.how_to_get}")


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
