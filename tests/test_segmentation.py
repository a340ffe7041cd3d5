"""The segmentation test: gtsegs_ijcv.mat and mask-folder loaders, mask fitting, the metrics
against an independent computation (scikit-learn's average precision, torch's interpolation and
the reference protocol written out step by step), and `fvit eval` with masks: rows, summary,
resume after kill -9."""

from __future__ import annotations

import json
import multiprocessing
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import killed_after_rows

from fvit_core import metrics
from fvit_core.batch.store import complete_lines
from fvit_core.batch.summary import pooled_ci
from fvit_core.cli.main import main
from fvit_core.data.images import ImageError, prepare_image
from fvit_core.data.segmentation import GtSegs, fit_mask, load_mask, mask_path
from fvit_core.errors import InputError

sklearn_metrics = pytest.importorskip("sklearn.metrics")
h5py = pytest.importorskip("h5py")


def write_gtsegs(path, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
    """A .mat file in gtsegs_ijcv.mat's layout (MATLAB v7.3 = HDF5, arrays stored transposed):
    /value/img (N, 1) references to (3, W, H) uint8; /value/gt (N, 1) references to (1, 1)
    arrays of references to (W, H) masks."""
    with h5py.File(path, "w") as f:
        img = f.create_dataset("/value/img", (len(images), 1), dtype=h5py.ref_dtype)
        gt = f.create_dataset("/value/gt", (len(images), 1), dtype=h5py.ref_dtype)
        refs = f.create_group("#refs#")
        for i, (image, mask) in enumerate(zip(images, masks)):
            stored = refs.create_dataset(f"img{i}", data=image.transpose(2, 1, 0))
            stored_mask = refs.create_dataset(f"gt{i}", data=mask.astype(np.uint8).T)
            holder = refs.create_dataset(f"holder{i}", (1, 1), dtype=h5py.ref_dtype)
            holder[0, 0] = stored_mask.ref
            img[i, 0] = stored.ref
            gt[i, 0] = holder.ref


def _blob_mask(height: int, width: int, top: int, left: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + h, left:left + w] = True
    return mask


@pytest.fixture(scope="module")
def gtsegs_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    shapes = [(40, 56), (48, 48), (36, 60)]  # non-square: a transposition error would show
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    masks = [_blob_mask(h, w, 5 + i, 7 + 2 * i, h // 2, w // 3) for i, (h, w) in enumerate(shapes)]
    path = tmp_path_factory.mktemp("gtsegs") / "gtsegs_small.mat"
    write_gtsegs(path, images, masks)
    return path, images, masks


# --------------------------------------------------------------------------------------------
# Loaders and mask fitting
# --------------------------------------------------------------------------------------------


def test_gtsegs_reads_every_image_and_mask_in_photo_orientation(gtsegs_file):
    path, images, masks = gtsegs_file
    with GtSegs(path) as gtsegs:
        assert len(gtsegs) == 3
        for i in range(3):
            item = gtsegs[i]
            assert item.pixels.shape == (3, *images[i].shape[:2]) and item.pixels.dtype == np.float32
            assert np.array_equal(np.round(item.pixels * 255).astype(np.uint8).transpose(1, 2, 0), images[i])
            assert np.array_equal(item.mask, masks[i])


def test_gtsegs_refuses_other_files_with_a_reason(tmp_path):
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f.create_dataset("/value/x", data=np.zeros(3))
    with pytest.raises(InputError, match="no /value/img and /value/gt"):
        GtSegs(tmp_path / "other.mat")
    (tmp_path / "text.mat").write_text("MATLAB 5.0 MAT-file")  # a pre-v7.3 file is not HDF5
    with pytest.raises(InputError, match="not a MATLAB v7.3"):
        GtSegs(tmp_path / "text.mat")


def test_mask_folder_mirrors_the_image_folder(tmp_path):
    assert mask_path(tmp_path / "masks", "dog/frame_0010.jpg") == tmp_path / "masks" / "dog" / "frame_0010.png"
    mask = _blob_mask(20, 30, 2, 3, 10, 12)
    (tmp_path / "dog").mkdir()
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "dog" / "m.png")
    assert np.array_equal(load_mask(tmp_path / "dog" / "m.png", (20, 30)), mask)
    with pytest.raises(ImageError, match="mask is 30×20 but its image is 31×20"):
        load_mask(tmp_path / "dog" / "m.png", (20, 31))
    with pytest.raises(ImageError, match="no mask for this image"):
        load_mask(tmp_path / "dog" / "none.png", (20, 30))


def test_fit_mask_resize_is_pil_nearest():
    mask = np.random.default_rng(1).random((37, 53)) > 0.6
    for size in [(32, 32), (16, 24), (64, 80)]:
        expected = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size[::-1], Image.NEAREST)) > 0
        assert np.array_equal(fit_mask(mask, size, mode="resize"), expected)


@pytest.mark.parametrize("mode", ["center_crop", "pad"])
def test_fit_mask_follows_the_photo_geometry(mode):
    # The whole photo region marked: after fitting, the mask is exactly where the photo's pixels are.
    height, width = 30, 60
    photo = np.ones((3, height, width), dtype=np.float32)
    fitted_photo = prepare_image(photo, (32, 32), mode=mode)[0] > 0.5
    assert np.array_equal(fit_mask(np.ones((height, width), bool), (32, 32), mode=mode), fitted_photo)
    if mode == "pad":
        assert not fitted_photo[:7].any() and fitted_photo[9:23].all()  # bars above and below are background


# --------------------------------------------------------------------------------------------
# Metrics against an independent computation
# --------------------------------------------------------------------------------------------


def test_upsampling_is_torch_bilinear():
    w = np.random.default_rng(2).random(64)
    for size in [(32, 32), (37, 53), (224, 224)]:
        expected = torch.nn.functional.interpolate(torch.tensor(w).reshape(1, 1, 8, 8), size=size, mode="bilinear",
                                                   align_corners=False)[0, 0].numpy()
        assert np.allclose(metrics.upsample_map(w, (8, 8), size), expected, atol=1e-12)


def test_average_precision_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.random(400) < rng.uniform(0.05, 0.9)
        s = np.round(rng.random(400), int(rng.integers(1, 4)))  # rounding makes ties
        assert metrics.average_precision(y, s) == pytest.approx(sklearn_metrics.average_precision_score(y, s),
                                                                abs=1e-12)
    assert metrics.average_precision(np.zeros(5, bool), np.arange(5.0)) == 0.0


def _reference_counts(w: np.ndarray, mask: np.ndarray, grid: tuple[int, int]) -> dict:
    """The protocol of Chefer et al.'s imagenet_seg_eval.py written out independently: torch
    bilinear upsampling, min-max normalisation, two channels (R <= mean, R > mean) and their argmax
    (ties to background), class histograms for IoU, scikit-learn AP of (1 - R, R) against the
    one-hot mask."""
    r = torch.nn.functional.interpolate(torch.tensor(w, dtype=torch.float64).reshape(1, 1, *grid), size=mask.shape,
                                        mode="bilinear", align_corners=False)
    r = (r - r.min()) / (r.max() - r.min())
    above, below = r.gt(r.mean()).double(), r.le(r.mean()).double()
    above[above != above], below[below != below] = 0, 0
    scores = torch.cat([1 - r, r], 1)
    scores[scores != scores] = 0
    scores = torch.round(scores, decimals=12)  # equal values tie whatever the arithmetic order (metrics.py)
    prediction = torch.cat([below, above], 1)[0].argmax(0).numpy()
    target = mask.astype(np.int64)
    intersection = np.histogram(prediction[prediction == target], bins=2, range=(0, 1))[0]
    union = np.histogram(prediction, bins=2, range=(0, 1))[0] + np.histogram(target, bins=2, range=(0, 1))[0] \
        - intersection
    one_hot = np.stack([target == 0, target == 1]).reshape(-1)
    ap = np.nan_to_num(sklearn_metrics.average_precision_score(one_hot, scores[0].numpy().reshape(-1)))
    return {"correct": int((prediction == target).sum()), "labeled": int(target.size),
            "intersection": intersection.tolist(), "union": union.tolist(), "ap": float(ap)}


def test_segmentation_counts_equal_the_reference_protocol():
    rng = np.random.default_rng(4)
    for i in range(12):
        w = rng.random(64) ** 3
        if i == 0:
            w = np.full(64, 1 / 64)  # a flat map: every pixel background, as the reference's NaN handling gives
        mask = rng.random((32, 32)) > 0.7 if i % 2 else _blob_mask(32, 32, 4, 6, 14, 18)
        ours, expected = metrics.segmentation_counts(w, mask, (8, 8)), _reference_counts(w, mask, (8, 8))
        assert {k: v for k, v in ours.items() if k != "ap"} == {k: v for k, v in expected.items() if k != "ap"}
        assert ours["ap"] == pytest.approx(expected["ap"], abs=1e-12)


def test_a_map_on_the_object_scores_higher_than_one_beside_it():
    mask = _blob_mask(32, 32, 0, 0, 16, 16)  # the top-left quarter
    on, beside = np.zeros((8, 8)), np.zeros((8, 8))
    on[:4, :4], beside[4:, 4:] = 1.0, 1.0
    good, bad = (metrics.segmentation_counts(m.reshape(-1), mask, (8, 8)) for m in (on, beside))
    assert good["correct"] > 0.95 * 1024 and bad["correct"] < 0.7 * 1024 and good["ap"] > 0.9 > bad["ap"]


def test_pooled_scores_and_their_bootstrap_interval():
    counts = [{"correct": 90, "labeled": 100, "intersection": [60, 20], "union": [70, 30], "ap": 0.8},
              {"correct": 50, "labeled": 300, "intersection": [100, 10], "union": [250, 100], "ap": 0.4}]
    scores = metrics.segmentation_scores(counts)
    assert scores["pixel_accuracy"] == pytest.approx(140 / 400)  # pooled pixels, not the mean of 0.9 and 0.17
    assert scores["miou"] == pytest.approx(np.mean([160 / 320, 30 / 130]))
    assert scores["map"] == pytest.approx(0.6)
    estimate = pooled_ci(counts + [None], "pixel_accuracy")
    assert estimate.n == 2 and estimate.mean == pytest.approx(0.35)
    assert estimate.low == pytest.approx(50 / 300) and estimate.high == pytest.approx(0.9)  # all-one-image resamples


# --------------------------------------------------------------------------------------------
# fvit eval with masks
# --------------------------------------------------------------------------------------------

SEG_ARGS = ["--mode", "vanilla,dds", "--sigma", "0.25", "--n-samples", "4", "--steps", "2", "--k", "4",
            "--no-perturbation-test", "--no-figures", "--no-progress", "--batch-size", "32"]


def _seg_command(data, out, tiny_pair_dir, *extra) -> list[str]:
    return ["eval", "--data", str(data), "--out", str(out), "--classifier", str(tiny_pair_dir / "classifier"),
            "--denoiser", str(tiny_pair_dir / "denoiser"), *SEG_ARGS, *extra]


def _rows(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def test_eval_on_a_gtsegs_file_scores_every_explanation(gtsegs_file, tiny_pair_dir, tmp_path):
    path, _, masks = gtsegs_file
    out = tmp_path / "seg"
    assert main(_seg_command(path, out, tiny_pair_dir)) == 0
    rows = _rows(out)
    assert len(rows) == 3 * 2 and {r["image"] for r in rows} == {"#00000", "#00001", "#00002"}
    assert all(r["label_source"] == "vanilla-prediction" and r["label"] == r["pred_clean"]
               for r in rows if r["mode"] == "vanilla")
    with GtSegs(path) as gtsegs:
        row = next(r for r in rows if r["image"] == "#00001" and r["mode"] == "vanilla")
        # The clean counts are those of the vanilla explanation against the fitted mask.
        from fvit_core.method.vanilla import vanilla
        from fvit_core.models import load_pair

        pair = load_pair(classifier=str(tiny_pair_dir / "classifier"), denoiser=str(tiny_pair_dir / "denoiser"))
        x = torch.from_numpy(prepare_image(gtsegs[1].pixels, pair.smoothing_size("vanilla")))[None]
        attention = vanilla(pair, x, method="raw", head_fusion="mean").attention[0]
        fitted = fit_mask(masks[1], tuple(pair.classifier.img_size), mode="resize")
        assert row["segmentation"]["clean"] == pytest.approx(
            metrics.segmentation_counts(attention, fitted, pair.classifier.grid_size))
    summary = json.loads((out / "summary.json").read_text())
    dds = next(r for r in summary if r["mode"] == "dds")
    expected = metrics.segmentation_scores([r["segmentation"]["attacked"] for r in rows if r["mode"] == "dds"])
    assert dds["seg_miou_attacked"]["mean"] == pytest.approx(expected["miou"])
    assert dds["seg_miou_attacked"]["low"] <= expected["miou"] <= dds["seg_miou_attacked"]["high"]
    assert "## Segmentation test" in (out / "summary.md").read_text()


def test_eval_with_a_mask_folder_and_without_one(image_folder, tiny_pair_dir, tmp_path):
    masks = tmp_path / "masks"
    for image in sorted(image_folder.rglob("*.png")):
        relative = image.relative_to(image_folder)
        (masks / relative.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray((_blob_mask(32, 32, 8, 8, 16, 16) * 255).astype(np.uint8)).save(masks / relative)
    out = tmp_path / "with"
    assert main(_seg_command(image_folder, out, tiny_pair_dir, "--masks", str(masks), "--limit", "2")) == 0
    rows = _rows(out)
    assert rows and all(r["segmentation"]["clean"]["labeled"] == 32 * 32 and r["label_source"] == "folder"
                        for r in rows)
    plain = tmp_path / "without"
    assert main(_seg_command(image_folder, plain, tiny_pair_dir, "--limit", "2")) == 0
    assert all(r["segmentation"] is None for r in _rows(plain))
    assert "## Segmentation test" not in (plain / "summary.md").read_text()
    # The same rows apart from the segmentation fields: masks change nothing else.
    assert [{**r, "segmentation": None} for r in rows] == _rows(plain)


def test_a_missing_mask_skips_its_image_with_the_reason(image_folder, tiny_pair_dir, tmp_path, capsys):
    masks = tmp_path / "masks"
    (masks / "a").mkdir(parents=True)
    out = tmp_path / "out"
    assert main(_seg_command(image_folder, out, tiny_pair_dir, "--masks", str(masks), "--limit", "1")) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["images_skipped"] == 1 and "no mask for this image" in info["skipped"][0]["reason"]
    assert main(_seg_command(image_folder, tmp_path / "o2", tiny_pair_dir, "--masks", str(tmp_path / "nowhere"))) == 2
    assert "mask folder not found" in capsys.readouterr().err


def test_a_killed_segmentation_run_resumes_to_the_same_rows(gtsegs_file, tiny_pair_dir, tmp_path):
    path = gtsegs_file[0]
    reference = tmp_path / "reference"
    assert main(_seg_command(path, reference, tiny_pair_dir)) == 0
    out = tmp_path / "killed"
    command = _seg_command(path, out, tiny_pair_dir)
    proc = multiprocessing.get_context("fork").Process(target=killed_after_rows, args=(command, 3))
    proc.start()
    proc.join(240)
    assert proc.exitcode == -signal.SIGKILL and len(complete_lines(out / "rows.jsonl")) == 3
    assert main(command) == 0
    assert _rows(out) == _rows(reference)
