"""Maps on the photo as it was given (report.overlay, data.images.input_region): the resampling,
the region each fit mode maps to, the blend and its opacity, and the figures (tiny pair)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.pipeline import analyze
from fvit_core.data.images import input_region, prepare_image
from fvit_core.errors import SettingError
from fvit_core.report import interactive, overlay, style

FAST = dict(n_samples=6, steps=2, bootstrap=20, k=4, batch_size=64)


@pytest.mark.parametrize("grid, size", [((4, 4), (32, 32)), ((2, 3), (7, 11)), ((14, 14), (480, 854)), ((3, 3), (3, 3))])
def test_upsample_grid_is_torch_bilinear_without_corner_alignment(grid, size):
    """The map is resampled as F.interpolate(mode="bilinear", align_corners=False) does it (each
    patch's value at its centre, clamped at the borders), which grad-cam and Captum users know."""
    values = np.random.default_rng(0).random(grid[0] * grid[1])
    ours = overlay.upsample_grid(values, grid, *size)
    reference = F.interpolate(torch.tensor(values, dtype=torch.float64).reshape(1, 1, *grid), size=size,
                              mode="bilinear", align_corners=False)[0, 0].numpy()
    assert ours.shape == size
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


def test_input_region_matches_what_prepare_image_keeps():
    """Centre crop: the crop box; pad: the letterbox canvas (past the photo); resize: all of it.
    Checked against prepare_image itself: the region, resized, is the model's input."""
    rng = np.random.default_rng(1)
    photo = rng.random((3, 60, 100)).astype(np.float32)
    assert input_region(60, 100, (32, 32), "resize") == (0, 0, 60, 100)
    top, left, h, w = input_region(60, 100, (32, 32), "center_crop")
    assert (top, left, h, w) == (0, 20, 60, 60)
    crop = photo[:, top:top + h, left:left + w]
    np.testing.assert_allclose(prepare_image(crop, (32, 32), mode="resize"),
                               prepare_image(photo, (32, 32), mode="center_crop"), atol=1e-6)
    top, left, h, w = input_region(60, 100, (32, 32), "pad")
    assert (top, left, h, w) == (-20, 0, 100, 100)  # 20 rows of black bar above and below
    canvas = np.zeros((3, h, w), dtype=np.float32)
    canvas[:, -top:-top + 60, -left:-left + 100] = photo
    np.testing.assert_allclose(prepare_image(canvas, (32, 32), mode="resize"),
                               prepare_image(photo, (32, 32), mode="pad"), atol=1e-6)
    with pytest.raises(SettingError, match="resize, center_crop, pad"):
        input_region(60, 100, (32, 32), "stretch")


def _scale() -> style.MapScale:
    return style.MapScale(False, 0.0, 1.0, style.ATTENTION_CMAP, "attention weight")


def test_blend_opacity_zero_is_the_photo_and_one_is_the_map_inside_the_region():
    import matplotlib as mpl

    photo = np.random.default_rng(2).random((3, 300, 400)).astype(np.float32)
    values = np.linspace(0.0, 1.0, 16)
    plain = np.round(photo.transpose(1, 2, 0) * 255).astype(np.uint8)
    assert np.array_equal(overlay.blend(photo, values, (4, 4), (32, 32), "center_crop", _scale(), 0.0), plain)
    full = overlay.blend(photo, values, (4, 4), (32, 32), "center_crop", _scale(), 1.0)
    top, left, h, w = input_region(300, 400, (32, 32), "center_crop")
    heat = mpl.colormaps[style.ATTENTION_CMAP](overlay.upsample_grid(values, (4, 4), h, w))[..., :3]
    np.testing.assert_allclose(full[top:top + h, left:left + w] / 255.0, heat, atol=0.5 / 255 + 1e-6)
    # Outside the crop the photo is shown as it is.
    assert np.array_equal(full[:, :left], plain[:, :left]) and np.array_equal(full[:, left + w:], plain[:, left + w:])
    half = overlay.blend(photo, values, (4, 4), (32, 32), "resize", _scale(), 0.5)
    everywhere = mpl.colormaps[style.ATTENTION_CMAP](overlay.upsample_grid(values, (4, 4), 300, 400))[..., :3]
    np.testing.assert_allclose(half / 255.0, 0.5 * photo.transpose(1, 2, 0) + 0.5 * everywhere, atol=0.5 / 255 + 1e-6)


def test_blend_over_a_letterboxed_photo_keeps_only_the_photo():
    photo = np.full((3, 50, 200), 0.5, dtype=np.float32)
    import matplotlib as mpl

    out = overlay.blend(photo, np.ones(16), (4, 4), (32, 32), "pad", _scale(), 1.0)
    assert out.shape == (100, 400, 3)  # enlarged x2 (longer side at least MIN_SIDE), no bars added
    yellow = np.round(np.array(mpl.colormaps[style.ATTENTION_CMAP](1.0)[:3]) * 255)
    assert np.abs(out.reshape(-1, 3) - yellow).max() <= 1  # all of the photo lies in the (padded) region


@pytest.mark.parametrize("shape, side", [((3, 32, 32), 256), ((3, 40, 300), 300), ((3, 3000, 1500), overlay.MAX_SIDE)])
def test_shown_photo_sizes(shape, side):
    """Small photos are enlarged by a whole factor without smoothing (CIFAR-10's 32x32 to 256);
    large ones shrunk to MAX_SIDE on the longer side; others kept."""
    photo = np.random.default_rng(3).random(shape).astype(np.float32)
    shown, factor = overlay.shown_photo(photo)
    assert max(shown.shape[:2]) == side and shown.shape[2] == 3
    if factor > 1:
        repeat = int(factor)
        assert np.array_equal(shown[::repeat, ::repeat], photo.transpose(1, 2, 0))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_opacity_outside_0_1_is_refused(bad):
    with pytest.raises(SettingError, match=r"opacity must be a number in \[0, 1\]"):
        overlay.check_opacity(bad)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(4)
    return rng.random((3, 90, 150)).astype(np.float32)


@pytest.fixture(scope="module")
def result(photo, tiny_pair):
    return analyze(photo, AnalysisConfig.of(**FAST, image_mode="center_crop"), pair=tiny_pair)


def test_the_result_knows_the_photo_it_was_given(result):
    assert result.original_size == (90, 150)
    image = result.to_json()["image"]
    assert image["original_size"] == [90, 150] and image["image_mode"] == "center_crop"
    assert image["fit_notice"] is None or "crop" in image["fit_notice"]


def test_overlay_figures_show_each_map_over_the_photo(result, photo):
    fig = overlay.overlay_figure(result, photo, opacity=0.3)
    pictures = [im for ax in fig.axes for im in ax.get_images()]
    assert len(pictures) == 4 and all(im.get_array().shape[:2] == (180, 300) for im in pictures)  # enlarged x2
    assert "opacity 0.3" in fig._suptitle.get_text() and "150×90 px" in fig._suptitle.get_text()
    scale = style.map_scale(result)
    expected = overlay.blend(photo, scale.values(result.fvit.attacked), result.grid_size, result.classifier_size,
                             "center_crop", scale, 0.3)
    assert np.array_equal(pictures[3].get_array(), expected)  # the FViT's attacked map, bottom right
    data = json.loads(interactive.plotly_on_photo(result, photo, opacity=0.3).to_json())
    assert [t["type"] for t in data["data"]] == ["image"] * 4
    assert "opacity 0.3" in data["layout"]["title"]["text"]
