"""Where the dashboard's models come from (no arbitrary server paths): the shipped pair, named
pairs whose files are in the models directory, its local folders, or hub names where downloads
are allowed; and what the sidebar says about the chosen classifier.

Nothing here calls Streamlit or imports torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fvit_core.errors import ModelLoadError
from fvit_core.models import MODEL_PAIRS, models_dir, resolve_model_dir


@dataclass(frozen=True)
class ModelInfo:
    """What the dashboard says about the chosen classifier: input size (H, W) in pixels, number of
    focal patches, class names and (when known) the training data."""

    input_size: tuple[int, int]
    num_patches: int
    class_names: tuple[str, ...]
    training_data: str | None = None

    def describe(self, pair_label: str) -> str:
        """One paragraph for the sidebar: what the model can and cannot say about a photo."""
        h, w = self.input_size
        shown = ", ".join(self.class_names[:12]) + (f", … ({len(self.class_names)} in all)" if len(self.class_names) > 12 else "")
        trained = f" Trained on {self.training_data}." if self.training_data else " Training data: not recorded."
        return (f"**Model:** {pair_label}, input {w}×{h} px ({self.num_patches} patches).{trained} "
                f"It knows {len(self.class_names)} classes only: {shown}. Any other photo still gets one of them.")


@dataclass(frozen=True)
class ModelChoice:
    """Where the classifier and denoiser come from.

    kind: "default" (the shipped pair), "local" (sub-folders of the models directory) or "hub"
    (names downloaded on demand, only where downloads are allowed). ``classifier`` /
    ``denoiser`` are what :func:`fvit_core.models.load_pair` takes (None: the pair's own).
    """

    kind: str = "default"
    classifier: str | None = None
    denoiser: str | None = None
    pair: str = "default"  # a name of fvit_core.models.MODEL_PAIRS (kind "pair")

    @property
    def allow_download(self) -> bool:
        return self.kind == "hub"

    def config_fields(self) -> dict[str, Any]:
        return {"model": self.pair, "classifier": self.classifier, "denoiser": self.denoiser}


def available_pairs(root: Path | None = None) -> list[str]:
    """Named pairs besides the shipped one whose two folders are in the models directory and
    pass its guard (models.resolve_model_dir): the dashboard offers only these."""
    root = root or models_dir()
    names = []
    for name, spec in MODEL_PAIRS.items():
        if name == "default" or Path(spec.classifier).is_absolute() or Path(spec.denoiser).is_absolute():
            continue
        try:
            resolve_model_dir(spec.classifier, root), resolve_model_dir(spec.denoiser, root)
        except ValueError:
            continue
        names.append(name)
    return names


_HUB = {"checked": False, "reachable": True}


def hub_checked() -> bool:
    """Whether the model hub answered (probed once per server: fvit_core.models.common.hub_reachable)."""
    if not _HUB["checked"]:
        from fvit_core.models.common import hub_reachable

        _HUB["reachable"], _HUB["checked"] = hub_reachable(), True
    return _HUB["reachable"]


def downloads_allowed() -> bool:
    """Hub downloads only with FVIT_ALLOW_DOWNLOAD=1 and without HF_HUB_OFFLINE=1."""
    return os.environ.get("FVIT_ALLOW_DOWNLOAD") == "1" and os.environ.get("HF_HUB_OFFLINE") != "1"


def folder_role(path: Path) -> str | None:
    """'classifier' (config.json + model.safetensors), 'denoiser' (unet/ or a UNet config with
    scheduler_config.json) or None."""
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return "classifier"
    if (path / "unet").is_dir() or (path / "scheduler_config.json").is_file():
        return "denoiser"
    return None


def local_model_folders(role: str, root: Path | None = None) -> list[str]:
    """Names of the direct sub-folders of the models directory that hold a ``role`` model.

    Each name goes through the engine's guard, :func:`fvit_core.models.resolve_model_dir` (the
    one the tests attack): hidden names, folders that are symlinks out of the directory, and
    folders with a weights file or a sub-folder (``unet/``) linking out of it are not listed.
    """
    root = root or models_dir()
    if not root.is_dir():
        return []
    names = []
    for entry in sorted(root.iterdir()):
        try:
            folder = resolve_model_dir(entry.name, root)
        except (ModelLoadError, OSError):
            continue
        if folder_role(folder) == role:
            names.append(entry.name)
    return names


def resolve_local_model(name: str, role: str, root: Path | None = None) -> str:
    """The absolute path of the models-directory sub-folder ``name``; ModelLoadError otherwise.

    The name is checked again at load time by :func:`fvit_core.models.resolve_model_dir` (the
    folder may have changed since it was listed), and must hold a ``role`` model.
    """
    root = root or models_dir()
    folder = resolve_model_dir(name, root)
    if folder_role(folder) != role:
        raise ModelLoadError(f"{name!r} is not a {role} folder in the models directory {root} "
                             "(set FVIT_MODELS_DIR to use another directory)")
    return str(folder)


_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def check_hub_name(name: str, what: str) -> str:
    """A timm model name or a hub id ('org/name'); never a path. ModelLoadError otherwise."""
    name = (name or "").strip()
    if not downloads_allowed():
        raise ModelLoadError("hub models need downloads: start the app with FVIT_ALLOW_DOWNLOAD=1 "
                             "(and without HF_HUB_OFFLINE=1), or put the model in the models directory")
    if not name:
        raise ModelLoadError(f"enter a {what} name (examples: vit_tiny_patch16_224, google/ddpm-cifar10-32)")
    if not _HUB_NAME.match(name) or ".." in name:
        raise ModelLoadError(f"{what} {name!r} is not a hub id (examples: vit_tiny_patch16_224, google/ddpm-cifar10-32)")
    if Path(name).exists():
        raise ModelLoadError(f"{what} {name!r} names a local path on the server; local models come only "
                             f"from the models directory {models_dir()}")
    return name
