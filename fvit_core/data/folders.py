"""The evaluation data: an image folder, its labels in the classifier's class order, a seeded subset.

Layout root/<class>/<image files> (:func:`list_image_folder`). An image is named by its
path relative to the root (the key of its rows; per-image randomness is seeded from it) and
numbered by its *index*, its position in the sorted listing of the whole folder (Cohen's idx).

Labels: a class folder's label is the classifier's class of the same name when every folder
name is one of the classifier's class names (the shipped CIFAR-10 pair and the shared
cifar10-test-2k folder); otherwise the folders' sorted order (0, 1, ...). A label map (JSON
object folder -> class index or class name) overrides both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fvit_core.errors import InputError, SettingError
from fvit_core.data.images import IMAGE_SUFFIXES


def list_image_folder(root: str | os.PathLike, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """Files and labels of an image-folder tree; classes in sorted order unless given."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"data folder not found: {root} (expected root/<class>/<image files>)")
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"{root} has no class sub-folders (expected root/<class>/<image files>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(path))
                labels.append(label)
    if not files:
        raise InputError(f"no images found under {root}")
    return files, labels, classes


@dataclass(frozen=True)
class ImageItem:
    """One image to evaluate: index in the full sorted listing, path relative to the root (for an
    image of a gtsegs file, #INDEX), label (None: no class is known, e.g. a gtsegs file)."""

    index: int
    path: str
    label: int | None


def read_label_map(source: str | os.PathLike | dict) -> dict[str, int | str]:
    """A label map from a JSON file (or a dict): folder name -> class index or class name."""
    if isinstance(source, dict):
        data = source
    else:
        from fvit_core.protocol.limits import read_settings_text, short_repr

        text = read_settings_text(source, "label map")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"cannot read the label map {source}: {short_repr(str(exc), 200)}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in data.values()):
        raise InputError("the label map must be a JSON object {\"folder\": class index or class name, ...}")
    return data


def folder_labels(folders: Sequence[str], class_names: Sequence[str],
                  label_map: dict[str, int | str] | None = None) -> dict[str, int]:
    """Label (classifier class index) of each class folder; ValueError for anything unmappable."""
    n_classes = len(class_names)
    if label_map is not None:
        missing = [f for f in folders if f not in label_map]
        if missing:
            raise InputError(f"the label map has no entry for the folders {', '.join(missing)}")
        labels = {f: _class_index(label_map[f], class_names) for f in folders}
    elif all(f in class_names for f in folders):
        labels = {f: list(class_names).index(f) for f in folders}
    else:
        if len(folders) > n_classes:
            raise InputError(f"{len(folders)} class folders but the classifier has {n_classes} classes; "
                             "pass a label map (--label-map) saying which class each folder is")
        labels = {f: i for i, f in enumerate(folders)}
    return labels


def _class_index(value: int | str, class_names: Sequence[str]) -> int:
    if isinstance(value, str):
        if value not in class_names:
            raise InputError(f"label map: {value!r} is not a class of the classifier ({', '.join(class_names)})")
        return list(class_names).index(value)
    if not 0 <= value < len(class_names):
        raise InputError(f"label map: class index {value} outside 0..{len(class_names) - 1}")
    return int(value)


def list_items(root: str | os.PathLike, class_names: Sequence[str],
               label_map: dict[str, int | str] | None = None) -> list[ImageItem]:
    """Every image of the folder, in sorted order (its index), with its label."""
    root = Path(root).expanduser()
    files, folder_idx, folders = list_image_folder(root)
    labels = folder_labels(folders, class_names, label_map)
    return [ImageItem(index=i, path=str(Path(f).relative_to(root)), label=labels[folders[c]])
            for i, (f, c) in enumerate(zip(files, folder_idx))]


def select(items: Sequence[ImageItem], *, limit: int | None, subset_seed: int) -> list[ImageItem]:
    """A seeded random order of the items, cut to ``limit``.

    The order is a permutation drawn from ``subset_seed``, so a larger limit extends a smaller
    one (a resumed run with more images keeps what is done) and a partial run is a random
    sample of the folder, not its first classes.
    """
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise SettingError(f"--limit must be a whole number >= 1, got {limit!r}")
    order = np.random.default_rng(subset_seed).permutation(len(items))
    chosen = order if limit is None else order[:limit]
    return [items[int(i)] for i in chosen]
