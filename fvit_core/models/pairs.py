"""Classifier / denoiser pairs: the named pairs (the shipped default, the paper's ImageNet setting),
the models folder and its guard, and :func:`load_pair`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fvit_core.errors import ModelLoadError
from fvit_core.models.common import MODELS_DIR, check_device
from fvit_core.models.denoiser import Denoiser, load_denoiser
from fvit_core.models.vit import PixelViT, load_classifier


# benchmarks/bench_realsize.py on the 2-core machine, float32 (docs/PERFORMANCE.md, "Real size").
CPU_SECONDS_PER_SAMPLE_REALSIZE = 23.0


def models_dir() -> Path:
    """The folder named pairs and the dashboard read local models from: $FVIT_MODELS_DIR, else
    the shipped assets/models."""
    return Path(os.environ.get("FVIT_MODELS_DIR") or MODELS_DIR).expanduser().resolve()


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

    def smoothing_size(self, mode: str) -> tuple[int, int]:
        """(H, W) in pixels of the space an analysis of this pair in smoothing ``mode`` works in:
        the one image size in which noise, attacks and radii live (docs/METHOD.md, "One
        smoothing space").

        With a denoiser, DDS adds its Gaussian noise at the denoiser's resolution (the noise the
        UNet was trained on at t* is white, of std 2*sigma in diffusion units, at its own size),
        denoises there, and only the denoised image is resized to the classifier's input (Carlini
        et al. 2023: noise and certificate at 256 px, classifier at 224). Resizing a noisy image
        instead would hand the UNet noise of a smaller std and with spatial correlation, which it
        was never trained on. Every model sees the image through the same resize, the
        classifier's first layer (PixelViT): the vanilla ViT, the attack and the FViT.

        The denoiser's sample size whenever the mode denoises (dds, denoise-only, multistep) or
        the caller evaluates several modes of a pair that has a denoiser (``mode="vanilla"``: the
        vanilla ViT shares the FViT's attacked image); the classifier's input size for ``rs`` and
        for a pair without a denoiser. For the shipped pair both are 32.
        """
        if mode == "rs" or self.denoiser is None:
            return self.classifier.img_size
        size = self.denoiser.sample_size
        return (size, size)

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
