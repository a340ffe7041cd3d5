"""The dashboard's images: uploads decoded by the engine's validated decoder, the gallery, and
what the page says about fitting a photo to the model's input.

Nothing here calls Streamlit or imports torch, so every function is testable on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvit_core.data.images import IMAGE_SUFFIXES, ImageError, image_digest, load_image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
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


IMAGE_MODE_LABELS: dict[str, str] = {"resize": "resize", "center_crop": "centre crop", "pad": "pad (letterbox)"}


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
    return LoadedImage(name=safe_name(name), data=bytes(data), pixels=pixels, digest=image_digest(pixels),
                       source=source, true_label=true_label)


def safe_name(name: str) -> str:
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
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
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




__all__ = ["ImageError", "LoadedImage", "GalleryItem", "bytes_digest", "generated_image",
           "label_from_name", "list_gallery", "load_upload", "safe_name", "samples_dir"]
