"""Object masks for the segmentation test (docs/METHOD.md, section 7): where they come from and
how they are fitted to the model's input.

Two sources, one result per image: the photo as [0, 1] pixels (3, H, W) and its mask (H, W)
of booleans (True = object).

- A **mask folder** beside an image folder: ``MASKS/<class>/<stem>.png`` for the image
  ``DATA/<class>/<stem>.<ext>`` (any image format the loader reads; a mask is object where it is
  non-zero, as the 0/255 PNGs of DAVIS and of Chefer et al.'s exported ground truth).
- **gtsegs_ijcv.mat** (ImageNet-segmentation, Guillaumin et al. 2014; the file Chefer et al.
  2021 evaluate on): a MATLAB v7.3 file, which is HDF5. ``/value/img`` is an (N, 1) array of
  object references to uint8 images stored transposed, (3, W, H); ``/value/gt`` is an (N, 1)
  array of references to (1, 1) arrays of references to the masks, stored (W, H). Read with h5py
  one image at a time, each bounded in size before it is read.

Fitting a mask to the model follows :func:`fvit_core.data.images.prepare_image` geometrically
(the same centre crop or letterbox; the letterbox bars are background) and then resizes with
nearest neighbour, so a mask stays binary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvit_core.data.images import (DEFAULT_MAX_PIXELS, ImageError, _check_pad_canvas, center_crop_box, load_image,
                                   pad_box)
from fvit_core.errors import InputError, SettingError

GTSEGS_SUFFIX = ".mat"
MASK_SUFFIX = ".png"
# An item of a gtsegs file is named FILE#INDEX in rows (five digits: the file has 4,276 images).
GTSEGS_SEPARATOR = "#"


def is_gtsegs(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a gtsegs-format .mat file (by suffix; the content is checked on open)."""
    return Path(path).suffix.lower() == GTSEGS_SUFFIX


@dataclass(frozen=True)
class SegmentedImage:
    """A photo (3, H, W) float32 in [0, 1] and its object mask (H, W) bool."""

    pixels: np.ndarray
    mask: np.ndarray


def mask_from_array(values: np.ndarray, what: str) -> np.ndarray:
    """A boolean object mask from a 2-d array (object = non-zero); refuses an empty or
    non-2-d array with a message naming ``what``."""
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[-1] in (3, 4):  # an RGB(A) mask: object where any channel is set
        values = values[..., :3].max(axis=-1)
    if values.ndim != 2 or 0 in values.shape:
        raise ImageError(f"{what}: a mask must be a 2-d image, got shape {values.shape}")
    return values != 0


# --------------------------------------------------------------------------------------------
# A mask folder
# --------------------------------------------------------------------------------------------


def mask_path(masks: str | os.PathLike, image: str) -> Path:
    """The mask of the image at ``image`` (relative to the data folder): MASKS/<same folders>/<stem>.png."""
    relative = Path(image)
    return Path(masks).expanduser() / relative.parent / (relative.stem + MASK_SUFFIX)


def load_mask(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """The mask at ``path`` (any image file the loader reads), which must have the photo's
    (H, W) ``shape``; an unreadable or missing mask is an :class:`ImageError` (the run skips it)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"no mask for this image: {path} not found (masks are MASKS/<class>/<stem>.png)")
    pixels = load_image(path)  # bounded decode, (3, H, W) in [0, 1]
    mask = mask_from_array(pixels.max(axis=0), str(path))
    if mask.shape != tuple(shape):
        raise ImageError(f"{path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image is {shape[1]}×{shape[0]}")
    return mask


# --------------------------------------------------------------------------------------------
# gtsegs_ijcv.mat
# --------------------------------------------------------------------------------------------


class GtSegs:
    """Read access to a gtsegs-format .mat file (HDF5), one image at a time.

    ``len(gtsegs)`` images; ``gtsegs[i]`` is a :class:`SegmentedImage`. The file stays open
    while the object lives (``close()`` or a ``with`` block ends it)."""

    def __init__(self, path: str | os.PathLike):
        import h5py  # only the segmentation test reads HDF5

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise InputError(f"segmentation file not found: {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path} is not a MATLAB v7.3 (HDF5) file: {exc}") from exc
        try:
            images, masks = self._file["/value/img"], self._file["/value/gt"]
        except KeyError as exc:
            self._file.close()
            raise InputError(f"{self.path} has no /value/img and /value/gt: not in gtsegs_ijcv.mat's layout") from exc
        if images.ndim != 2 or masks.ndim != 2 or images.shape[0] != masks.shape[0] or images.shape[1] < 1:
            self._file.close()
            raise InputError(f"{self.path}: /value/img {images.shape} and /value/gt {masks.shape} must be (N, 1) each")
        self._images, self._masks = images, masks

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def _dataset(self, reference, what: str):
        import h5py

        if not isinstance(reference, h5py.Reference) or not reference:
            raise ImageError(f"{what} is not an object reference")
        target = self._file[reference]
        if not isinstance(target, h5py.Dataset):
            raise ImageError(f"{what} does not point to an array")
        return target

    def __getitem__(self, index: int) -> SegmentedImage:
        if not 0 <= index < len(self):
            raise IndexError(index)
        what = f"{self.path}{GTSEGS_SEPARATOR}{index}"
        image = self._dataset(self._images[index, 0], f"{what} image")
        if image.ndim != 3 or image.shape[0] not in (1, 3) or image.shape[1] * image.shape[2] > DEFAULT_MAX_PIXELS:
            raise ImageError(f"{what}: image array {image.shape} is not (3, W, H) within {DEFAULT_MAX_PIXELS:,} pixels")
        holder = self._dataset(self._masks[index, 0], f"{what} mask")
        if holder.shape != (1, 1):
            raise ImageError(f"{what}: mask holder {holder.shape} is not a (1, 1) array of references")
        mask = self._dataset(holder[0, 0], f"{what} mask")
        if mask.shape != image.shape[1:]:
            raise ImageError(f"{what}: mask {mask.shape} does not match image {image.shape[1:]} (both stored W, H)")
        pixels = np.asarray(image[()], dtype=np.float32).transpose(0, 2, 1) / 255.0  # (C, W, H) -> (C, H, W)
        if pixels.shape[0] == 1:
            pixels = np.repeat(pixels, 3, axis=0)
        return SegmentedImage(pixels=np.ascontiguousarray(pixels),
                              mask=mask_from_array(np.asarray(mask[()]).T, what))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "GtSegs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def gtsegs_item_name(index: int) -> str:
    """The row name of image ``index`` of a gtsegs file (its key for resuming)."""
    return f"{GTSEGS_SEPARATOR}{index:05d}"


def gtsegs_index(name: str) -> int:
    return int(name.lstrip(GTSEGS_SEPARATOR))


# --------------------------------------------------------------------------------------------
# Fitting a mask to the model's input
# --------------------------------------------------------------------------------------------


def fit_mask(mask: np.ndarray, size: tuple[int, int], *, mode: str) -> np.ndarray:
    """The mask (H, W) bool fitted to ``size`` = (h, w) as :func:`prepare_image` fits its photo
    (``resize``, ``center_crop``, ``pad`` with background bars), resized by nearest neighbour.

    Nearest neighbour as PIL's ``Image.NEAREST`` (what the reference protocol resizes its masks
    with, torchvision's Resize on a PIL image): output pixel i takes the input pixel under its
    centre, floor((i + 0.5) * H / h)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise SettingError(f"a mask must be (H, W), got shape {mask.shape}")
    target = (int(size[0]), int(size[1]))
    if mode == "center_crop":
        top, left, crop_h, crop_w = center_crop_box(mask.shape[0], mask.shape[1], target)
        mask = mask[top:top + crop_h, left:left + crop_w]
    elif mode == "pad":
        top, left, padded_h, padded_w = pad_box(mask.shape[0], mask.shape[1], target)
        _check_pad_canvas(mask.shape, (padded_h, padded_w), DEFAULT_MAX_PIXELS)  # as the photo's canvas
        canvas = np.zeros((padded_h, padded_w), dtype=bool)
        canvas[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
        mask = canvas
    elif mode != "resize":
        raise SettingError(f"mode must be resize, center_crop or pad, got {mode!r}")
    rows = ((2 * np.arange(target[0]) + 1) * mask.shape[0]) // (2 * target[0])
    cols = ((2 * np.arange(target[1]) + 1) * mask.shape[1]) // (2 * target[1])
    return mask[rows[:, None], cols[None, :]]
