"""Maps on the photo as it was given: a patch map resampled to the photo's size, blended over it.

pytorch-grad-cam's ``show_cam_on_image`` and Captum's ``visualize_image_attr(method="blended_heat_map")``
are what people expect: the map is upsampled smoothly (bilinear over the patch centres) to the
region of the photo the model's input showed (data.images.input_region: the whole photo for
resize, the crop for centre crop, the letterbox canvas for pad) and blended with an opacity the
user chooses; outside that region the photo is shown as it is. Large photos are shown at most
:data:`MAX_SIDE` pixels on their longer side; small ones (a 32x32 CIFAR-10 image) are enlarged
without smoothing to at least :data:`MIN_SIDE`, so the map is smooth and the pixels stay sharp.
The attacked maps are drawn over the photo as given: the attack changed the model's input, not
the file.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from fvit_core.data.images import input_region
from fvit_core.errors import SettingError
from fvit_core.report.style import (MODEL_KEYS, MapScale, comparison, map_scale, model_label, publication_style,
                                    settings_text)

if TYPE_CHECKING:
    from fvit_core.analysis.result import AnalysisResult

MAX_SIDE = 1024  # pixels of the shown photo's longer side, at most
MIN_SIDE = 256  # ... and at least (by a whole factor, nearest neighbour)


def upsample_grid(values: np.ndarray, grid: tuple[int, int], height: int, width: int) -> np.ndarray:
    """(height, width) bilinear interpolation of a (rows * cols,) patch map, each patch's value at
    its centre, clamped at the borders (torch's align_corners=False)."""
    rows, cols = grid
    cells = np.asarray(values, dtype=np.float64).reshape(rows, cols)

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, position - low

    r0, r1, fr = axis(height, rows)
    c0, c1, fc = axis(width, cols)
    top = cells[r0][:, c0] * (1 - fc) + cells[r0][:, c1] * fc
    bottom = cells[r1][:, c0] * (1 - fc) + cells[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def shown_photo(photo: np.ndarray) -> tuple[np.ndarray, float]:
    """The photo (3, H, W) in [0, 1] as (h, w, 3) float, between MIN_SIDE and MAX_SIDE px on its
    longer side, and the factor it was scaled by."""
    height, width = photo.shape[1:]
    hwc = np.clip(np.asarray(photo, dtype=np.float32), 0.0, 1.0).transpose(1, 2, 0)
    if max(height, width) < MIN_SIDE:
        repeat = math.ceil(MIN_SIDE / max(height, width))
        return np.repeat(np.repeat(hwc, repeat, axis=0), repeat, axis=1), float(repeat)
    factor = min(1.0, MAX_SIDE / max(height, width))
    if factor < 1.0:
        from PIL import Image

        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        hwc = np.asarray(Image.fromarray(np.round(hwc * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC),
                         dtype=np.float32) / 255.0
    return hwc, factor


def blend(photo: np.ndarray, values: np.ndarray, grid: tuple[int, int], input_size: tuple[int, int], image_mode: str,
          scale: MapScale, opacity: float) -> np.ndarray:
    """uint8 (h, w, 3): the map ``values`` over the photo (3, H, W) in [0, 1], on ``scale``, where
    the model's input of ``input_size`` lay (``image_mode``), at ``opacity`` in [0, 1]."""
    import matplotlib as mpl

    opacity = check_opacity(opacity)
    hwc, factor = shown_photo(photo)
    top, left, region_h, region_w = input_region(photo.shape[1], photo.shape[2], tuple(input_size), image_mode)
    top, left = round(top * factor), round(left * factor)
    region_h, region_w = max(1, round(region_h * factor)), max(1, round(region_w * factor))
    heat = upsample_grid(values, grid, region_h, region_w)
    rgb = mpl.colormaps[scale.cmap](mpl.colors.Normalize(scale.vmin, scale.vmax, clip=True)(heat))[..., :3]
    out = hwc.copy()
    height, width = hwc.shape[:2]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + region_h, height), min(left + region_w, width)
    if y1 > y0 and x1 > x0:
        patch = rgb[y0 - top:y1 - top, x0 - left:x1 - left]
        out[y0:y1, x0:x1] = (1 - opacity) * out[y0:y1, x0:x1] + opacity * patch
    return np.round(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8)


def overlay_figure(result: AnalysisResult, photo: np.ndarray, *, opacity: float = 0.5) -> Figure:
    """Both models' clean and attacked maps over the photo as it was given (a 2 x 2 grid), with the
    map's colour bar and the settings in the title."""
    scale = map_scale(result)
    height, width = photo.shape[1:]
    panel = 1.7
    aspect = height / width
    with publication_style():
        fig = Figure(figsize=(2 * panel + 0.9, 2 * panel * aspect + 0.9), layout="constrained")
        axes = fig.subplots(2, 2)
        for col, which in enumerate(MODEL_KEYS):
            cmp_ = comparison(result, which)
            for row, name in enumerate(("clean", "attacked")):
                view = getattr(cmp_, name)
                ax = axes[row, col]
                ax.imshow(blend(photo, scale.values(view), result.grid_size, result.classifier_size,
                                result.config.image_mode, scale, opacity), interpolation="antialiased")
                ax.set_xticks([]), ax.set_yticks([])
                ax.spines[:].set_visible(False)
                ax.set_title(f"{model_label(result, which)}, {name}: {view.label_name} ({view.confidence:.2f})",
                             fontsize=6)
        import matplotlib as mpl

        mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(scale.vmin, scale.vmax), cmap=scale.cmap)
        bar = fig.colorbar(mappable, ax=axes[:, 1], fraction=0.05, pad=0.02, shrink=0.9)
        bar.set_label(scale.label)
        from fvit_core.report.static import wrapped

        fig.suptitle(f"On the photo ({width}×{height} px, {result.config.image_mode}; opacity {opacity:g})\n"
                     f"{wrapped(settings_text(result))}", fontsize=6)
        return fig


def check_opacity(opacity: float) -> float:
    """``opacity`` as a float in [0, 1]; SettingError otherwise."""
    if isinstance(opacity, bool) or not (isinstance(opacity, (int, float)) and math.isfinite(opacity)
                                         and 0.0 <= opacity <= 1.0):
        raise SettingError(f"opacity must be a number in [0, 1], got {opacity!r}")
    return float(opacity)
