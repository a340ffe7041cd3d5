"""Top-k overlap of explanations and divergences of prediction distributions (docs/METHOD.md, 1).

Numpy first: every function accepts numpy arrays, torch tensors (detached and moved to the CPU)
or nested sequences, computes in float64 and returns numpy values or Python floats.

- T_k(w) = indices of the k largest entries of w, ties broken by the lower index.
- V_k(w, w') = |T_k(w) ∩ T_k(w')| / k in [0, 1] (explanation stability).
- Divergences D(p || q) of two class distributions (prediction stability), natural logarithm.
- Map metrics (docs/METRICS.md gives definitions and sources): Spearman and Kendall rank
  correlation over all patches, Pearson correlation, SSIM on the patch grid, centroid shift in
  patch units, and the mass of a map inside another map's top-k set (:func:`map_metrics`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Union

import numpy as np
# scipy.special only: scipy.stats adds about 0.5 s to every start-up (issue 24), and rank
# averaging is a few lines of numpy (checked against scipy.stats.rankdata in tests/test_metrics.py).
from scipy.special import logsumexp, rel_entr

from fvit_core.errors import InputError, SettingError


ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence[float]]  # noqa: F821  (torch is optional here)

# Zero probabilities make KL and Renyi (order > 1) infinite; they are raised to this floor and
# the vector renormalised, which caps KL(p || q) near log(1 / floor) ~ 27.6 nats.
PROBABILITY_FLOOR = 1e-12
# Tolerance on sum(p) = 1 (float32 softmax over 1000 classes is off by about 1e-6).
_SUM_TOLERANCE = 1e-4


def _as_array(values: ArrayLike, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise InputError(f"{name} must have shape (P,) or (B, P) with P >= 1, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or inf")
    return array


def _check_k(k: int, size: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= size:
        raise SettingError(f"k must be an integer in 1..{size} (the number of patches), got {k!r}")
    return int(k)


def _pair(w1: ArrayLike, w2: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(w1, "w1"), _as_array(w2, "w2")
    if a.shape != b.shape:
        raise InputError(f"attention maps must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _ranks(w: np.ndarray) -> np.ndarray:
    """Rank of each entry (0 = largest), ties by lower index: the inverse of the stable order."""
    order = np.argsort(-w, axis=-1, kind="stable")
    return np.argsort(order, axis=-1, kind="stable")


def average_ranks(w: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, smallest first, tied entries sharing their mean rank
    (scipy.stats.rankdata's "average" method), as float64."""
    w = np.asarray(w, dtype=np.float64)
    rows = w.reshape(math.prod(w.shape[:-1]), w.shape[-1]) if w.ndim else w.reshape(1, 1)
    ranks = np.empty(rows.shape)
    for i, row in enumerate(rows):
        ordered = np.sort(row)
        # Entries below x, plus the mean of the positions 1..m that the m copies of x occupy.
        below = np.searchsorted(ordered, row, side="left")
        up_to = np.searchsorted(ordered, row, side="right")
        ranks[i] = (below + up_to + 1) / 2.0
    return ranks.reshape(w.shape)


def topk_indices(w: ArrayLike, k: int) -> np.ndarray:
    """T_k(w): indices of the k largest entries, largest first, ties broken by the lower index.

    w: (P,) or (B, P). Returns int64 (k,) or (B, k).
    """
    w = _as_array(w, "w")
    k = _check_k(k, w.shape[-1])
    return np.argsort(-w, axis=-1, kind="stable")[..., :k]


def topk_overlap(w1: ArrayLike, w2: ArrayLike, k: int) -> float | np.ndarray:
    """V_k(w1, w2) = |T_k(w1) ∩ T_k(w2)| / k in [0, 1].

    (P,) inputs give a float; (B, P) inputs give a (B,) array, one overlap per row.
    """
    a, b = _pair(w1, w2)
    k = _check_k(k, a.shape[-1])
    shared = ((_ranks(a) < k) & (_ranks(b) < k)).sum(axis=-1) / k
    return float(shared) if a.ndim == 1 else shared


def overlap_curve(w1: ArrayLike, w2: ArrayLike, ks: Sequence[int] | None = None) -> np.ndarray:
    """V_k(w1, w2) for every k in ``ks`` (default 1..P): (K,) or (B, K) for (B, P) inputs.

    Patch j is in both top-k sets exactly when max(rank1_j, rank2_j) < k, so one ranking serves
    every k.
    """
    a, b = _pair(w1, w2)
    size = a.shape[-1]
    ks_array = np.arange(1, size + 1) if ks is None else np.array([_check_k(k, size) for k in ks], dtype=np.int64)
    if ks_array.size == 0:
        raise SettingError("ks is empty; pass at least one k in 1..P or None for all")
    worst_rank = np.maximum(_ranks(a), _ranks(b))  # (..., P)
    shared = (worst_rank[..., None, :] < ks_array[:, None]).sum(axis=-1)  # (..., K)
    return shared / ks_array


def _check_distribution(values: ArrayLike, name: str) -> np.ndarray:
    p = _as_array(values, name)
    if np.any(p < 0):
        raise InputError(f"{name} has negative entries; pass probabilities (softmax of logits), not logits")
    totals = p.sum(axis=-1)
    if np.any(np.abs(totals - 1.0) > _SUM_TOLERANCE):
        raise InputError(f"{name} must sum to 1 along the last axis (got sums {np.round(totals, 6)}); apply softmax")
    return p / totals[..., None]


def _floored(p: np.ndarray) -> np.ndarray:
    p = np.maximum(p, PROBABILITY_FLOOR)
    return p / p.sum(axis=-1, keepdims=True)


def renyi_divergence(p: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    """D_alpha(p || q) = log(sum p^alpha q^(1-alpha)) / (alpha - 1); alpha = 1 gives KL.

    Expects validated, floored distributions (last axis); computed in log space so large alpha
    does not overflow.
    """
    if alpha == 1.0:
        return rel_entr(p, q).sum(axis=-1)
    log_terms = alpha * np.log(p) + (1.0 - alpha) * np.log(q)
    return logsumexp(log_terms, axis=-1) / (alpha - 1.0)


def divergences(p: ArrayLike, q: ArrayLike, *, renyi_alpha: float = 2.0) -> dict[str, float | np.ndarray]:
    """Divergences between class distributions p and q ((C,) or (B, C)), in nats.

    Keys:
        kl: KL(p || q) = sum p log(p / q).
        js: Jensen-Shannon, 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2; symmetric, <= ln 2.
        tv: total variation, 0.5 * sum |p - q|, in [0, 1].
        hellinger: sqrt(0.5 * sum (sqrt p - sqrt q)^2), in [0, 1].
        renyi: D_alpha(p || q) of order ``renyi_alpha`` (> 0; 1 gives KL), the divergence of the
            prediction-stability bound (METHOD.md 5.2).

    Zeros: for kl and renyi, entries below PROBABILITY_FLOOR (1e-12) are raised to it and both
    vectors renormalised, so a class with q = 0 < p gives a large finite value instead of inf.
    js, tv and hellinger are finite with zeros and use p and q as given. Inputs must be
    non-negative, finite and sum to 1 (within 1e-4; they are renormalised exactly).
    Returns floats for (C,) inputs, (B,) arrays for (B, C).
    """
    if not (np.isfinite(renyi_alpha) and renyi_alpha > 0):
        raise SettingError(f"renyi_alpha must be a finite number > 0 (e.g. 2.0), got {renyi_alpha!r}")
    p, q = _check_distribution(p, "p"), _check_distribution(q, "q")
    if p.shape != q.shape:
        raise InputError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    mid = 0.5 * (p + q)
    p_floor, q_floor = _floored(p), _floored(q)
    values = {
        "kl": rel_entr(p_floor, q_floor).sum(axis=-1),
        "js": 0.5 * rel_entr(p, mid).sum(axis=-1) + 0.5 * rel_entr(q, mid).sum(axis=-1),
        "tv": 0.5 * np.abs(p - q).sum(axis=-1),
        "hellinger": np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(axis=-1)),
        "renyi": renyi_divergence(p_floor, q_floor, float(renyi_alpha)),
    }
    if p.ndim == 1:
        return {name: float(value) for name, value in values.items()}
    return values


def label_flip(p: ArrayLike, q: ArrayLike) -> bool | np.ndarray:
    """Whether the predicted class (argmax, ties to the lower index) differs between p and q.

    Accepts probabilities or logits, (C,) -> bool or (B, C) -> (B,) bool array.
    """
    a, b = _as_array(p, "p"), _as_array(q, "q")
    if a.shape != b.shape:
        raise InputError(f"p and q must have the same shape, got {a.shape} and {b.shape}")
    flipped = np.argmax(a, axis=-1) != np.argmax(b, axis=-1)
    return bool(flipped) if a.ndim == 1 else flipped


# --------------------------------------------------------------------------------------------
# Map metrics: whole-map similarity of two explanations (docs/METRICS.md)
# --------------------------------------------------------------------------------------------

# Names in the order the JSON, the eval rows and the tables use. For all but centroid_shift,
# higher means more alike (1 for identical maps); centroid_shift is 0 for identical maps.
MAP_METRICS: tuple[str, ...] = ("spearman", "kendall", "pearson", "ssim", "centroid_shift", "topk_mass")
# SSIM constants of Wang et al. (2004) for data range L = 1 (each map is scaled by its maximum),
# and the side of the square uniform window: 3 patches, so a CIFAR 8x8 grid has 36 windows
# (the usual 7x7 or 11x11 windows would leave 4 or none).
SSIM_K1, SSIM_K2, SSIM_WINDOW = 0.01, 0.03, 3


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation; NaN where a row is constant (correlation undefined)."""
    da, db = a - a.mean(axis=-1, keepdims=True), b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((da * da).sum(axis=-1) * (db * db).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (da * db).sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)


def pearson(w1: ArrayLike, w2: ArrayLike) -> float | np.ndarray:
    """Pearson correlation of two maps over all patches; NaN if either map is constant."""
    a, b = _pair(w1, w2)
    value = _pearson_rows(a, b)
    return float(value) if a.ndim == 1 else value


def spearman(w1: ArrayLike, w2: ArrayLike) -> float | np.ndarray:
    """Spearman rank correlation over all patches (ties get average ranks, as scipy.stats.spearmanr):
    the Pearson correlation of :func:`average_ranks`. NaN if either map is constant."""
    a, b = _pair(w1, w2)
    value = _pearson_rows(average_ranks(a), average_ranks(b))
    return float(value) if a.ndim == 1 else value


def kendall(w1: ArrayLike, w2: ArrayLike) -> float | np.ndarray:
    """Kendall's tau-b over all patches (as scipy.stats.kendalltau); NaN if either map is constant.

    tau_b = (C - D) / sqrt(n_x n_y) over the pairs of patches i < j, with C - D = sum of
    sign(x_i - x_j) sign(y_i - y_j) and n_x, n_y the pairs not tied in x, in y. Computed for all
    rows at once (a bootstrap floor compares hundreds of pairs of maps), in chunks of rows that
    keep the pair signs under about 16 MB.
    """
    a, b = _pair(w1, w2)
    x, y = np.atleast_2d(a), np.atleast_2d(b)
    first, second = np.triu_indices(x.shape[-1], k=1)
    values = np.empty(len(x))
    chunk = max(1, _KENDALL_CHUNK_PAIRS // max(len(first), 1))
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        sx = np.sign(x[rows, first] - x[rows, second]).astype(np.int8)
        sy = np.sign(y[rows, first] - y[rows, second]).astype(np.int8)
        concordance = np.einsum("ij,ij->i", sx, sy, dtype=np.int64)
        untied_x, untied_y = np.count_nonzero(sx, axis=-1), np.count_nonzero(sy, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant map: no untied pair, NaN
            tau = concordance / np.sqrt(untied_x) / np.sqrt(untied_y)
        values[rows] = np.where((untied_x > 0) & (untied_y > 0), np.clip(tau, -1.0, 1.0), math.nan)
    return float(values[0]) if a.ndim == 1 else values


_KENDALL_CHUNK_PAIRS = 8_000_000  # row-pairs of int8 signs per chunk (two arrays: about 16 MB)


def _grid(w: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    rows, cols = int(grid[0]), int(grid[1])
    if rows < 1 or cols < 1 or rows * cols != w.shape[-1]:
        raise SettingError(f"grid {grid} does not hold {w.shape[-1]} patches; pass the model's grid_size (rows, cols)")
    return w.reshape(*w.shape[:-1], rows, cols)


def centroid(w: ArrayLike, grid: tuple[int, int]) -> np.ndarray:
    """Centre of mass (row, col) of a non-negative map in patch units (patch (i, j) at (i, j)).

    (P,) -> (2,), (B, P) -> (B, 2). A map with zero total mass has no centre: ValueError.
    """
    a = _as_array(w, "w")
    if np.any(a < 0):
        raise InputError("centroid needs a non-negative map (explanations are clamped at 0)")
    total = a.sum(axis=-1)
    if np.any(total <= 0):
        raise InputError("centroid of a map with zero total mass is undefined")
    maps = _grid(a, grid)
    rows = np.arange(maps.shape[-2], dtype=np.float64)
    cols = np.arange(maps.shape[-1], dtype=np.float64)
    r = (maps.sum(axis=-1) * rows).sum(axis=-1) / total
    c = (maps.sum(axis=-2) * cols).sum(axis=-1) / total
    return np.stack([r, c], axis=-1)


def centroid_shift(w1: ArrayLike, w2: ArrayLike, grid: tuple[int, int]) -> float | np.ndarray:
    """Euclidean distance between the two maps' centres of mass, in patches (0 when identical)."""
    a, b = _pair(w1, w2)
    value = np.linalg.norm(centroid(a, grid) - centroid(b, grid), axis=-1)
    return float(value) if a.ndim == 1 else value


def ssim(w1: ArrayLike, w2: ArrayLike, grid: tuple[int, int]) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004) of two maps on the patch grid.

    Each map is divided by its maximum (data range L = 1), then SSIM is computed in every
    position of a uniform SSIM_WINDOW x SSIM_WINDOW window inside the grid (no padding; smaller
    grids use the whole side) with population moments and C1 = (0.01 L)^2, C2 = (0.03 L)^2, and
    averaged. 1 for maps equal up to scale; in [-1, 1].
    """
    a, b = _pair(w1, w2)
    if np.any(a < 0) or np.any(b < 0):
        raise InputError("ssim needs non-negative maps (explanations are clamped at 0)")
    x, y = _grid(_scaled_by_max(a), grid), _grid(_scaled_by_max(b), grid)
    window = (min(SSIM_WINDOW, x.shape[-2]), min(SSIM_WINDOW, x.shape[-1]))
    view = np.lib.stride_tricks.sliding_window_view
    xs, ys = view(x, window, axis=(-2, -1)), view(y, window, axis=(-2, -1))  # (..., R', C', h, w)
    mx, my = xs.mean(axis=(-2, -1)), ys.mean(axis=(-2, -1))
    vx = (xs * xs).mean(axis=(-2, -1)) - mx * mx
    vy = (ys * ys).mean(axis=(-2, -1)) - my * my
    cov = (xs * ys).mean(axis=(-2, -1)) - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    local = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    value = local.mean(axis=(-2, -1))
    return float(value) if a.ndim == 1 else value


def _scaled_by_max(w: np.ndarray) -> np.ndarray:
    top = w.max(axis=-1, keepdims=True)
    return np.where(top > 0, w / np.where(top > 0, top, 1.0), 0.0)


def topk_mass(w_reference: ArrayLike, w_other: ArrayLike, k: int) -> float | np.ndarray:
    """Share of ``w_other``'s mass inside the top-k set of ``w_reference``: sum over T_k(w_ref)
    of w_other / sum(w_other), in [0, 1] for non-negative maps (the attacked map's mass on the
    clean map's most important patches)."""
    a, b = _pair(w_reference, w_other)
    k = _check_k(k, a.shape[-1])
    if np.any(b < 0):
        raise InputError("topk_mass needs a non-negative map (explanations are clamped at 0)")
    total = b.sum(axis=-1)
    inside = np.where(_ranks(a) < k, b, 0.0).sum(axis=-1)
    value = np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)
    return float(value) if a.ndim == 1 else value


def map_metrics(w_reference: ArrayLike, w_other: ArrayLike, grid: tuple[int, int], k: int
                ) -> dict[str, float | None] | dict[str, np.ndarray]:
    """Every MAP_METRICS value of ``w_other`` against ``w_reference`` (e.g. attacked vs clean).

    (P,) inputs give {name: float or None} (None where a correlation is undefined: a constant
    map); (B, P) inputs give {name: (B,) array} with NaN there.
    """
    a, b = _pair(w_reference, w_other)
    values = {
        "spearman": spearman(a, b), "kendall": kendall(a, b), "pearson": pearson(a, b), "ssim": ssim(a, b, grid),
        "centroid_shift": centroid_shift(a, b, grid), "topk_mass": topk_mass(a, b, k),
    }
    if a.ndim == 2:
        return values
    return {name: (float(value) if math.isfinite(value) else None) for name, value in values.items()}


# --------------------------------------------------------------------------------------------
# The segmentation test (Chefer et al. 2021's protocol; docs/METRICS.md)
# --------------------------------------------------------------------------------------------


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a bilinear resize along one axis, with half-pixel centres
    (torch's ``interpolate(mode="bilinear", align_corners=False)``)."""
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, source - low


def upsample_map(w: ArrayLike, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A patch map (P,) laid out on ``grid`` (rows, cols), resized bilinearly to ``size`` (h, w)
    pixels as torch's ``interpolate(..., mode="bilinear", align_corners=False)``: float64 (h, w)."""
    values = _as_array(w, "map").reshape(int(grid[0]), int(grid[1]))
    r0, r1, rw = _bilinear_axis(values.shape[0], int(size[0]))
    c0, c1, cw = _bilinear_axis(values.shape[1], int(size[1]))
    rows = values[r0] * (1.0 - rw)[:, None] + values[r1] * rw[:, None]
    return rows[:, c0] * (1.0 - cw)[None, :] + rows[:, c1] * cw[None, :]


def average_precision(targets: ArrayLike, scores: ArrayLike) -> float:
    """Average precision of ``scores`` for binary ``targets``: sum over the distinct score
    thresholds, from the highest, of (recall gain) x precision (scikit-learn's
    ``average_precision_score``, tests/test_segmentation.py checks it). 0.0 without a positive
    (the reference code turns scikit-learn's NaN into 0)."""
    y = np.asarray(targets, dtype=bool).reshape(-1)
    s = _as_array(scores, "scores").reshape(-1)
    if y.shape != s.shape:
        raise InputError(f"targets and scores must have the same size, got {y.size} and {s.size}")
    if not y.any():
        return 0.0
    order = np.argsort(-s, kind="mergesort")
    ordered, hits = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]  # the last position of each distinct score
    true_positives = np.cumsum(hits)[last]
    precision = true_positives / (last + 1.0)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


SEGMENTATION_METRICS: tuple[str, ...] = ("pixel_accuracy", "miou", "map")


def segmentation_counts(w: ArrayLike, mask: np.ndarray, grid: tuple[int, int]) -> dict[str, Any]:
    """One map against one object mask, as Chefer et al. 2021 score it (docs/METRICS.md).

    The patch map ``w`` (P,) is resized bilinearly to the mask's (h, w) and min-max normalised
    to R in [0, 1] (a constant map has no normalisation: every pixel then counts as background
    with score 0, as the reference's NaN handling gives). Two-class prediction: object where
    R > mean(R). Returns the per-image counts that :func:`segmentation_scores` pools:
    ``correct`` and ``labeled`` pixels, ``intersection`` and ``union`` per class (background,
    object), and ``ap``: the average precision of the scores (1 - R for background, R for object)
    against the one-hot mask, both classes pooled.
    """
    target = np.asarray(mask, dtype=bool)
    if target.ndim != 2:
        raise InputError(f"a mask must be (H, W), got shape {target.shape}")
    r = upsample_map(w, grid, target.shape)
    low, high = float(r.min()), float(r.max())
    if high > low:
        r = (r - low) / (high - low)
        foreground = r > r.mean()
        # Rounded to 12 decimals for the ranking: bilinear upsampling makes many mathematically
        # equal values, which tie or not depending on the order of the float operations (numpy's
        # and torch's differ), and a broken tie moves AP by up to 3e-4.
        scores = np.round(np.concatenate([(1.0 - r).reshape(-1), r.reshape(-1)]), 12)
    else:
        foreground = np.zeros(target.shape, dtype=bool)
        scores = np.zeros(2 * target.size)
    intersection = [int(np.sum(~foreground & ~target)), int(np.sum(foreground & target))]
    union = [int(np.sum(~foreground | ~target)), int(np.sum(foreground | target))]
    return {
        "correct": int(np.sum(foreground == target)), "labeled": int(target.size),
        "intersection": intersection, "union": union,
        "ap": average_precision(np.concatenate([~target.reshape(-1), target.reshape(-1)]), scores),
    }


def segmentation_scores(counts: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Pixel accuracy, mIoU and mAP over images, pooled as the reference code pools them:
    pixel accuracy = sum(correct) / sum(labeled); mIoU = the mean over the two classes of
    sum(intersection) / sum(union); mAP = the mean of the per-image AP."""
    every_image = np.arange(len(counts))[None, :]
    return {name: float(values[0]) for name, values in resampled_segmentation_scores(counts, every_image).items()}


def resampled_segmentation_scores(counts: Sequence[dict[str, Any]], picks: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`segmentation_scores` of many selections of the images at once: ``picks`` (R, n)
    holds indices into ``counts`` (a bootstrap's resamples); returns (R,) arrays."""
    if not counts:
        raise InputError("segmentation_scores needs at least one image's counts")
    correct = np.array([c["correct"] for c in counts], dtype=np.float64)[picks].sum(axis=1)
    labeled = np.array([c["labeled"] for c in counts], dtype=np.float64)[picks].sum(axis=1)
    intersection = np.array([c["intersection"] for c in counts], dtype=np.float64)[picks].sum(axis=1)
    union = np.array([c["union"] for c in counts], dtype=np.float64)[picks].sum(axis=1)
    return {"pixel_accuracy": correct / labeled, "miou": (intersection / np.maximum(union, 1.0)).mean(axis=1),
            "map": np.array([c["ap"] for c in counts], dtype=np.float64)[picks].mean(axis=1)}
