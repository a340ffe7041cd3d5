"""Plain helpers of the dashboard: images, model sources, settings keys, the result cache.

Nothing here calls Streamlit, so every function is testable on its own; the Streamlit code in
``sidebar.py``, ``session.py`` and the pages calls these. Nothing here imports torch either: the
engine is reached through ``fvit_core``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fvit_core.attacks.registry import AttackSpec, ParamSpec
from fvit_core.errors import is_out_of_memory, is_user_error, one_line
from fvit_core.data.images import ImageError, image_digest, load_image
from fvit_core.models import MODEL_PAIRS, ModelLoadError, resolve_model_dir
from fvit_core.models import models_dir as engine_models_dir
from fvit_core.analysis.config import AnalysisConfig

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
UPLOAD_TYPES: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")
MAX_UPLOAD_BYTES = 20_000_000  # keep equal to server.maxUploadSize (MB) in .streamlit/config.toml
# Decoded pixels stay in the session (the CLI must see the same file), so cap them below the
# engine's 40 M default: 16 M pixels is 192 MB of float32 per decoded image.
MAX_UPLOAD_PIXELS = 16_000_000
# A session keeps the last decoded upload (sidebar._decoded), plus at most two older images that
# something on the page still shows: the last good image (while a newer upload is refused) and
# the image of the analysis on screen (while new settings wait for a click). So at most 3
# decoded images per session, usually 1: 3 x 192 MB at the pixel limit. Refusals are kept as
# messages (the last 16), so a refused file is not decoded again on every rerun.
DECODED_IMAGES_PER_SESSION = 1
REFUSALS_PER_SESSION = 16
# A decode running longer than this is stopped (images.load_image's budget): a 16-megapixel
# upload decodes in under 2 s on one idle core (scripts/measure_decode.py), so 15 s leaves room
# for a busy server and still frees the thread soon after a hostile upload.
MAX_DECODE_SECONDS = 15.0
DEFAULT_GALLERY_IMAGE = "cifar10_airplane_2.png"  # classified correctly by the shipped ViT

# Settings that take long enough that the dashboard asks for a click instead of rerunning on
# every slider move.
MAX_INTERACTIVE_SAMPLES = 128
MAX_INTERACTIVE_STEPS = 50
SLOW_ATTACKS: dict[str, str] = {
    "eot_dds": "the adaptive attack back-propagates through the denoiser",
    "autoattack": "AutoAttack runs an ensemble of attacks",
}


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def error_message(what: str, exc: BaseException) -> str:
    """The page's line about a failure. A user's error (an engine FViTError, a file problem, out
    of memory) is shown with its message; anything else is a bug: "internal error, please report"
    and the exception's type, never its traceback (the server log has it)."""
    if not is_user_error(exc):
        log.error("%s: internal error", what, exc_info=exc)
    if is_user_error(exc):
        hint = "out of memory (use fewer samples or a smaller batch): " if is_out_of_memory(exc) else ""
        return f"{what}: {hint}{one_line(exc)}"
    return f"{what}: internal error, please report it ({type(exc).__name__})."


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedImage:
    """A decoded input image and where it came from.

    ``data`` holds the encoded bytes as given (exported, so that ``fvit analyze`` reproduces the
    analysis from the same file); ``pixels`` is float32 (3, H, W) in [0, 1].
    """

    name: str
    data: bytes
    pixels: np.ndarray
    digest: str
    source: str  # "upload" | "gallery" | "generated"
    true_label: str | None = None

    @property
    def size_text(self) -> str:
        return f"{self.pixels.shape[2]}×{self.pixels.shape[1]} px"


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


# An upload shrunk by more than this (per side) to reach the model's input loses most of its detail.
RESIZE_NOTICE_FACTOR = 4.0
ASPECT_TOLERANCE = 0.02  # relative difference of aspect ratios still called "the same shape"

IMAGE_MODE_LABELS: dict[str, str] = {"resize": "resize", "center_crop": "centre crop", "pad": "pad (letterbox)"}


def fit_notice(image_size: tuple[int, int], input_size: tuple[int, int], mode: str) -> str | None:
    """A warning when fitting an image (H, W) to the model's input (H, W) changes it a lot: shrunk
    by more than :data:`RESIZE_NOTICE_FACTOR`, or of another shape than the input (then what the
    chosen mode does to it). None when neither applies."""
    (h, w), (th, tw) = image_size, input_size
    notes = []
    factor = max(h / th, w / tw)
    if factor > RESIZE_NOTICE_FACTOR:
        notes.append(f"shrunk about {factor:.0f}× ({w}×{h} → {tw}×{th} px): the model sees far less detail than the file has")
    aspect, target = w / h, tw / th
    if abs(aspect / target - 1.0) > ASPECT_TOLERANCE:
        shape = f"{w}×{h}, not {'square' if tw == th else f'{tw}:{th} like the model'}"
        effect = {"resize": "resize stretches it (choose pad or centre crop to keep its shape)",
                  "center_crop": f"centre crop cuts {'the sides' if aspect > target else 'top and bottom'} off",
                  "pad": f"pad adds black bars {'above and below' if aspect > target else 'left and right'}"}
        notes.append(f"{shape}: {effect.get(mode, mode)}")
    return ("This image is " + "; ".join(notes) + ".") if notes else None


def label_from_name(file_name: str, class_names: tuple[str, ...] | list[str]) -> str | None:
    """The true class named in a file name ('cat_03.jpg', 'my-dog.png' -> 'cat', 'dog'), when
    exactly one class of the model appears in it as a whole word; else None."""
    words = [w for w in re.split(r"[^a-z0-9]+", Path(str(file_name)).stem.lower()) if w]
    text = "_" + "_".join(words) + "_"
    found = {name for name in class_names
             if "_" + "_".join(w for w in re.split(r"[^a-z0-9]+", name.lower()) if w) + "_" in text}
    return found.pop() if len(found) == 1 else None


def bytes_digest(data: bytes) -> str:
    """sha256 of encoded bytes (to notice a new upload without decoding it again)."""
    return hashlib.sha256(data).hexdigest()


def load_upload(name: str, data: bytes, *, source: str = "upload", true_label: str | None = None,
                max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS,
                max_seconds: float = MAX_DECODE_SECONDS) -> LoadedImage:
    """Decode an uploaded file (bytes) with the engine's validated decoder.

    Raises ImageError (a ValueError) with a message for the page: not an image, truncated,
    oversized, unsupported format, or a decode stopped after ``max_seconds``.
    """
    pixels = load_image(bytes(data), max_bytes=max_bytes, max_pixels=max_pixels, max_seconds=max_seconds)
    return LoadedImage(name=_safe_name(name), data=bytes(data), pixels=pixels, digest=image_digest(pixels),
                       source=source, true_label=true_label)


def _safe_name(name: str) -> str:
    """A file name safe to offer for download and to put in a shell command."""
    base = Path(str(name)).name or "image.png"
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "image"
    return cleaned if "." in cleaned else cleaned + ".png"


@dataclass(frozen=True)
class GalleryItem:
    """One bundled sample: file name, path and (optional) true class from labels.json."""

    name: str
    path: Path
    label: str | None


def samples_dir() -> Path:
    """The gallery folder: $FVIT_SAMPLES_DIR, else assets/samples."""
    return Path(os.environ.get("FVIT_SAMPLES_DIR") or DEFAULT_SAMPLES_DIR)


def list_gallery(folder: Path | None = None) -> list[GalleryItem]:
    """Image files of the gallery folder (sorted by name), with labels from labels.json if present.

    labels.json maps a file name to either a class name or ``{"label": name, ...}``.
    """
    folder = Path(folder or samples_dir())
    if not folder.is_dir():
        return []
    labels = _read_labels(folder / "labels.json")
    items = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower().lstrip(".") in UPLOAD_TYPES:
            items.append(GalleryItem(path.name, path, labels.get(path.name)))
    return items


def _read_labels(path: Path) -> dict[str, str | None]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # labels are optional decoration; a broken file must not block the gallery
    labels: dict[str, str | None] = {}
    for name, entry in raw.items() if isinstance(raw, dict) else ():
        value = entry.get("label") if isinstance(entry, dict) else entry
        labels[name] = value if isinstance(value, str) else None
    return labels


def load_gallery_image(item: GalleryItem) -> LoadedImage:
    """Decode a gallery file (ImageError if it is broken)."""
    data = item.path.read_bytes()
    return load_upload(item.name, data, source="gallery", true_label=item.label)


def generated_image(size: int = 32) -> LoadedImage:
    """A synthetic test card, shown when the gallery folder is empty so the app still opens."""
    import io

    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    disc = ((x - 0.5) ** 2 + (y - 0.55) ** 2 < 0.09).astype(np.float32)
    rgb = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.8 - 0.5 * x], axis=-1) * (1 - disc[..., None])
    rgb += disc[..., None] * np.array([0.9, 0.7, 0.2])
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return load_upload("test_card.png", buffer.getvalue(), source="generated")


# --------------------------------------------------------------------------------------------
# Model sources (issue 7: no arbitrary server paths)
# --------------------------------------------------------------------------------------------


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


def pair_cost_seconds(config: AnalysisConfig) -> float | None:
    """Rough seconds of one analysis of a real-size named pair on a CPU (None for quick pairs):
    the clean and the attacked estimate, N samples each, at the measured cost per sample."""
    spec = MODEL_PAIRS.get(config.model)
    if spec is None or spec.cpu_seconds_per_sample is None or not str(config.device).startswith("cpu"):
        return None
    return 2 * config.n_samples * spec.cpu_seconds_per_sample


def models_dir() -> Path:
    """The only folder local models are read from: $FVIT_MODELS_DIR, else assets/models (the
    engine's models.models_dir, which named pairs read too)."""
    return engine_models_dir()


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


# --------------------------------------------------------------------------------------------
# Settings, keys, cost
# --------------------------------------------------------------------------------------------


def settings_key(digest: str, config: AnalysisConfig) -> str:
    """The cache key of one analysis: image digest + every setting (canonical JSON)."""
    return f"{digest}|{json.dumps(config.to_dict(), sort_keys=True, default=str)}"


def expensive_reason(config: AnalysisConfig) -> str | None:
    """Why these settings should wait for a click (None when they are quick enough)."""
    reasons = []
    if config.n_samples > MAX_INTERACTIVE_SAMPLES:
        reasons.append(f"{config.n_samples} samples (> {MAX_INTERACTIVE_SAMPLES})")
    if config.attack in SLOW_ATTACKS:
        reasons.append(SLOW_ATTACKS[config.attack])
    steps = config.attack_params.get("steps", config.steps)
    if isinstance(steps, int) and steps > MAX_INTERACTIVE_STEPS:
        reasons.append(f"{steps} attack steps (> {MAX_INTERACTIVE_STEPS})")
    queries = config.attack_params.get("n_queries")
    if isinstance(queries, int) and queries > 1000:
        reasons.append(f"{queries} queries")
    if config.mode == "multistep":
        reasons.append("multi-step denoising")
    cost = pair_cost_seconds(config)
    if cost is not None:
        reasons.append(f"real-size models on a CPU: about {cost / 60:.0f} min")
    if config.sensitivity_samples:
        reasons.append(f"neighbourhood sensitivity ({config.sensitivity_samples} x {config.n_samples} samples)")
    return "; ".join(reasons) or None


def linked_params(spec: AttackSpec) -> list[str]:
    """The parameters of ``spec`` that the 'tie to the analysis' option sets: the registry's rules,
    the same as the CLI's (``AttackSpec.derived``: the Linf step alpha = eps / 5; and
    ``AttackSpec.follows``: the top-k attack's k and explanation, the adaptive attack's sigma)."""
    return [name for name, _ in spec.derived] + list(spec.follows)


def linked_value(spec: AttackSpec, name: str, params: dict[str, Any], settings: dict[str, Any]) -> Any:
    """Value of a linked parameter: its registry rule applied to ``params``, or the analysis setting."""
    rules = dict(spec.derived)
    return rules[name](params) if name in rules else settings[name]


@dataclass(frozen=True)
class WidgetSpec:
    """How to show one attack parameter: kind ('slider', 'number', 'select', 'checkbox'),
    bounds and value in display units (value * scale), and the scale back to pixel units."""

    kind: str
    label: str
    value: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    scale: float = 1.0
    format: str | None = None
    options: tuple[str, ...] = ()
    help: str = ""


MAX_SLIDER_POSITIONS = 500


def widget_spec(param: ParamSpec) -> WidgetSpec:
    """Map a :class:`ParamSpec` to a widget: '/255' floats become sliders in 1/255 units, floats
    with a modest range sliders, wide-range floats and all integers number inputs."""
    help_text = param.help + (f" (in {param.unit})" if param.unit else "")
    if param.kind == "bool":
        return WidgetSpec("checkbox", param.name, bool(param.default), help=help_text)
    if param.kind == "choice":
        return WidgetSpec("select", param.name, param.default, options=tuple(param.choices), help=help_text)
    scale = param.display_scale
    low = None if param.min is None else param.min * scale
    high = None if param.max is None else param.max * scale
    step = None if param.step is None else round(param.step * scale, 10)
    label = f"{param.name} ({param.unit})" if param.unit else param.name
    if param.kind == "int":
        return WidgetSpec("number", label, int(param.default), _int(low), _int(high), int(step or 1), help=help_text)
    value = round(float(param.default) * scale, 10)
    fits = None not in (low, high, step) and step > 0 and (high - low) / step <= MAX_SLIDER_POSITIONS
    decimals = max(0, -int(np.floor(np.log10(step)))) if step else 3
    return WidgetSpec("slider" if fits else "number", label, value, low, high, step, scale,
                      f"%.{decimals}f", help=help_text)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def attack_params(spec: AttackSpec, shown: dict[str, Any], *, linked: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """Attack parameters in pixel units from widget values in display units.

    ``shown`` maps a parameter name to its widget value (display units); with ``linked`` the
    :func:`linked_params` are set from the analysis ``settings`` instead. Every parameter is
    written out, so an exported settings file does not depend on today's defaults.
    """
    params: dict[str, Any] = {}
    for param in spec.params:
        if param.name in shown:
            value = shown[param.name]
            if param.kind == "float":
                value = float(value) / param.display_scale
            elif param.kind == "int":
                value = int(value)
            params[param.name] = value
        else:
            params[param.name] = param.default
    if linked:
        for name in linked_params(spec):
            params[name] = linked_value(spec, name, params, settings)
    return params


def build_config(settings: dict[str, Any], attack_values: dict[str, Any], models: ModelChoice) -> AnalysisConfig:
    """The :class:`AnalysisConfig` of the sidebar's values (ValueError if a value is invalid)."""
    known = {f for f in AnalysisConfig().to_dict()}
    fields = {name: value for name, value in settings.items() if name in known}
    fields.update(models.config_fields())
    fields["attack_params"] = dict(attack_values)
    fields["eps"] = fields["steps"] = None  # everything is in attack_params
    return AnalysisConfig.from_dict(fields)


class ResultCache:
    """A small least-recently-used map (settings key -> value), kept per browser session."""

    def __init__(self, maxsize: int = 32) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


__all__ = [
    "WidgetSpec", "attack_params", "build_config", "linked_params", "widget_spec", "GalleryItem", "ImageError", "LoadedImage", "ModelChoice", "ResultCache", "bytes_digest", "check_hub_name",
    "downloads_allowed", "expensive_reason", "generated_image", "list_gallery", "load_gallery_image", "load_upload",
    "local_model_folders", "models_dir", "resolve_local_model", "samples_dir", "settings_key",
]
