"""Top-k overlap and divergences against hand-computed values (docs/METHOD.md, section 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fvit_core.metrics import divergences, label_flip, overlap_curve, topk_indices, topk_overlap

# ---------------------------------------------------------------------------------- top-k


def test_topk_indices_orders_by_weight_and_breaks_ties_by_lower_index():
    w = np.array([0.1, 0.3, 0.3, 0.05, 0.3, 0.2])
    assert topk_indices(w, 4).tolist() == [1, 2, 4, 5]
    assert topk_indices(np.ones(5), 2).tolist() == [0, 1]
    assert topk_indices(np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 2.0]]), 2).tolist() == [[1, 0], [0, 2]]


def test_overlap_identical_disjoint_and_partial():
    w = np.array([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    assert topk_overlap(w, w, 3) == 1.0
    assert topk_overlap(w, w[::-1].copy() + np.arange(6) * 1e-3, 3) == 0.0  # top-3 sets {0,1,2} vs {3,4,5}
    other = np.array([0.4, 0.0, 0.0, 0.3, 0.2, 0.1])  # top-3 {0, 3, 4}: shares only patch 0
    assert topk_overlap(w, other, 3) == pytest.approx(1 / 3)
    assert topk_overlap(w, other, 1) == 1.0
    assert topk_overlap(w, other, 6) == 1.0


def test_overlap_uses_tie_breaking():
    # Four equal weights: the top-2 set is {0, 1}, so a map peaked on 2 and 3 shares nothing.
    assert topk_overlap(np.full(4, 0.25), np.array([0.0, 0.0, 0.5, 0.5]), 2) == 0.0
    assert topk_overlap(np.full(4, 0.25), np.array([0.5, 0.5, 0.0, 0.0]), 2) == 1.0


def test_overlap_batched_and_torch_inputs():
    w1 = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]])
    w2 = torch.tensor([[0.5, 0.0, 0.2, 0.3], [0.4, 0.3, 0.2, 0.1]])
    result = topk_overlap(w1, w2, 2)
    assert isinstance(result, np.ndarray) and result.shape == (2,)
    np.testing.assert_allclose(result, [0.5, 0.0])


def test_overlap_curve_matches_pointwise_overlap():
    rng = np.random.default_rng(0)
    w1, w2 = rng.random((3, 16)), rng.random((3, 16))
    curve = overlap_curve(w1, w2)
    assert curve.shape == (3, 16)
    expected = np.stack([topk_overlap(w1, w2, k) for k in range(1, 17)], axis=-1)
    np.testing.assert_allclose(curve, expected)
    np.testing.assert_allclose(curve[:, -1], 1.0)  # k = P: both sets are everything
    np.testing.assert_allclose(overlap_curve(w1[0], w2[0], ks=[2, 8]), expected[0, [1, 7]])


@pytest.mark.parametrize("k", [0, 5, -1, 2.0, True])
def test_invalid_k_raises(k):
    with pytest.raises(ValueError, match=r"1\.\.4"):
        topk_overlap(np.ones(4), np.ones(4), k)


def test_mismatched_or_non_finite_maps_raise():
    with pytest.raises(ValueError, match="same shape"):
        topk_overlap(np.ones(4), np.ones(5), 2)
    with pytest.raises(ValueError, match="NaN"):
        topk_indices(np.array([0.1, np.nan]), 1)


# ---------------------------------------------------------------------------------- divergences

P, Q = [0.5, 0.5], [0.9, 0.1]


def test_divergences_against_hand_computed_values():
    d = divergences(P, Q)
    assert d["kl"] == pytest.approx(math.log(5 / 3))  # 0.5 ln(5/9) + 0.5 ln 5
    js = 0.25 * math.log(25 / 21) + 0.5 * (0.9 * math.log(9 / 7) - 0.1 * math.log(3))  # m = (0.7, 0.3)
    assert d["js"] == pytest.approx(js)
    assert d["tv"] == pytest.approx(0.4)
    assert d["hellinger"] == pytest.approx(math.sqrt(1 - math.sqrt(0.45) - math.sqrt(0.05)))
    assert d["renyi"] == pytest.approx(math.log(25 / 9))  # order 2: ln(sum p^2 / q)
    assert divergences(P, Q, renyi_alpha=3.0)["renyi"] == pytest.approx(
        0.5 * math.log(0.125 / 0.81 + 0.125 / 0.01)
    )


def test_divergences_of_identical_distributions_are_zero():
    d = divergences(np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.5]))
    for value in d.values():
        assert value == pytest.approx(0.0, abs=1e-12)


def test_js_symmetric_and_bounded_by_ln2():
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(5), size=20), rng.dirichlet(np.ones(5), size=20)
    np.testing.assert_allclose(divergences(p, q)["js"], divergences(q, p)["js"])
    assert np.all(divergences(p, q)["js"] <= math.log(2))
    # Disjoint supports reach the bound exactly; TV and Hellinger reach 1.
    d = divergences([1.0, 0.0], [0.0, 1.0])
    assert d["js"] == pytest.approx(math.log(2))
    assert d["tv"] == pytest.approx(1.0) and d["hellinger"] == pytest.approx(1.0)
    assert math.isfinite(d["kl"]) and d["kl"] > 20  # floored, not infinite


def test_tv_in_unit_interval_and_batched_shapes():
    rng = np.random.default_rng(2)
    p, q = rng.dirichlet(np.ones(10), size=50), rng.dirichlet(np.ones(10), size=50)
    d = divergences(torch.tensor(p), q)
    assert d["tv"].shape == (50,)
    assert np.all((d["tv"] >= 0) & (d["tv"] <= 1))


def test_renyi_tends_to_kl_as_alpha_tends_to_one():
    kl = divergences(P, Q)["kl"]
    assert divergences(P, Q, renyi_alpha=1.0)["renyi"] == pytest.approx(kl)
    assert divergences(P, Q, renyi_alpha=1.0001)["renyi"] == pytest.approx(kl, rel=1e-3)
    assert divergences(P, Q, renyi_alpha=0.9999)["renyi"] == pytest.approx(kl, rel=1e-3)
    # Renyi divergence is non-decreasing in its order.
    orders = [0.5, 1.0, 2.0, 5.0, 50.0]
    values = [divergences(P, Q, renyi_alpha=a)["renyi"] for a in orders]
    assert values == sorted(values)


@pytest.mark.parametrize(
    "p,q,kwargs,match",
    [
        ([0.5, 0.6], [0.5, 0.5], {}, "sum to 1"),
        ([-0.1, 1.1], [0.5, 0.5], {}, "negative"),
        ([0.5, 0.5], [1.0, 0.0, 0.0], {}, "same shape"),
        ([0.5, 0.5], [0.5, 0.5], {"renyi_alpha": 0.0}, "renyi_alpha"),
    ],
)
def test_invalid_distributions_raise(p, q, kwargs, match):
    with pytest.raises(ValueError, match=match):
        divergences(p, q, **kwargs)


def test_label_flip():
    assert label_flip(P, Q) is False
    assert label_flip([0.4, 0.6], Q) is True
    np.testing.assert_array_equal(label_flip([[0.4, 0.6], [0.9, 0.1]], [Q, Q]), [True, False])


# ---------------------------------------------------------------------------------- map metrics

from fvit_core.metrics import (  # noqa: E402
    MAP_METRICS,
    centroid,
    centroid_shift,
    kendall,
    map_metrics,
    pearson,
    spearman,
    ssim,
    topk_mass,
)


def _blob(grid=(8, 8), at=(2, 3)) -> np.ndarray:
    """A map with mass 0.5 at ``at``, 0.25 right of it and 0.25 below it; zero elsewhere."""
    m = np.zeros(grid)
    r, c = at
    m[r, c], m[r, c + 1], m[r + 1, c] = 0.5, 0.25, 0.25
    return m.ravel()


def test_map_metrics_of_identical_maps():
    w = np.random.default_rng(0).random(64)
    w /= w.sum()
    values = map_metrics(w, w, (8, 8), 8)
    assert list(values) == list(MAP_METRICS)
    for name in ("spearman", "kendall", "pearson", "ssim"):
        assert values[name] == pytest.approx(1.0)
    assert values["centroid_shift"] == 0.0
    assert values["topk_mass"] == pytest.approx(np.sort(w)[-8:].sum())  # the map's own top-8 mass


def test_rank_correlations_of_reversed_ranks_are_minus_one():
    w = np.arange(1, 17, dtype=float)
    assert spearman(w, w[::-1].copy()) == pytest.approx(-1.0)
    assert kendall(w, w[::-1].copy()) == pytest.approx(-1.0)
    assert pearson(w, w[::-1].copy()) == pytest.approx(-1.0)
    # a monotone but non-linear transform keeps the ranks, not the linear correlation
    assert spearman(w, w**3) == pytest.approx(1.0) and kendall(w, w**3) == pytest.approx(1.0)
    assert pearson(w, w**3) < 0.95
    # one swapped pair out of C(4, 2) = 6: tau = (5 - 1) / 6, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert kendall([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)


def test_average_ranks_equal_scipy_rankdata_with_ties():
    from scipy.stats import rankdata

    from fvit_core.metrics import average_ranks

    rng = np.random.default_rng(3)
    for shape in [(1,), (9,), (4, 16), (2, 3, 10)]:
        tied = rng.integers(0, 4, size=shape).astype(float)  # many ties
        assert np.array_equal(average_ranks(tied), rankdata(tied, axis=-1))
    spread = rng.normal(size=(50, 197))
    assert np.array_equal(average_ranks(spread), rankdata(spread, axis=-1))
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_correlations_of_a_constant_map_are_undefined():
    values = map_metrics(np.full(16, 1 / 16), np.arange(16.0) / 120, (4, 4), 4)
    assert values["spearman"] is None and values["kendall"] is None and values["pearson"] is None
    assert values["topk_mass"] == pytest.approx((0 + 1 + 2 + 3) / 120)  # ties: top-4 of a flat map = patches 0..3


def test_centroid_and_its_shift_in_patch_units():
    w = _blob()
    np.testing.assert_allclose(centroid(w, (8, 8)), [2.25, 3.25])
    assert centroid_shift(w, _blob(at=(2, 4)), (8, 8)) == pytest.approx(1.0)  # one column right
    assert centroid_shift(w, _blob(at=(3, 5)), (8, 8)) == pytest.approx(math.sqrt(5))
    batch = centroid_shift(np.stack([w, w]), np.stack([w, _blob(at=(5, 3))]), (8, 8))
    np.testing.assert_allclose(batch, [0.0, 3.0])
    with pytest.raises(ValueError, match="grid"):
        centroid_shift(w, w, (4, 4))


def test_ssim_on_the_grid_by_hand():
    # 3x3 grid: one window. x constant (1 after scaling), y = (0, ..., 8) / 8.
    x, y = np.ones(9), np.arange(9.0)
    mx, my = 1.0, 0.5
    vy = np.var(y / 8)
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * c2 / ((mx**2 + my**2 + c1) * (vy + c2))
    assert ssim(x, y, (3, 3)) == pytest.approx(expected)
    assert ssim(y, 3 * y, (3, 3)) == pytest.approx(1.0)  # equal up to scale
    # a shifted blob shares little structure: far below 1, and symmetric
    a, b = _blob(), _blob(at=(4, 5))
    assert ssim(a, b, (8, 8)) < 0.5
    assert ssim(a, b, (8, 8)) == pytest.approx(ssim(b, a, (8, 8)))


def test_topk_mass_counts_the_other_maps_mass_on_the_reference_top_k():
    clean = np.array([0.4, 0.3, 0.2, 0.1])
    attacked = np.array([0.1, 0.1, 0.3, 0.5])
    assert topk_mass(clean, attacked, 2) == pytest.approx(0.2)
    assert topk_mass(clean, attacked[::-1].copy(), 2) == pytest.approx(0.8)
    np.testing.assert_allclose(topk_mass(np.stack([clean, clean]), np.stack([attacked, clean]), 1), [0.1, 0.4])


def test_map_metrics_batched_equal_per_row():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 16)), rng.random((3, 16))
    batched = map_metrics(a, b, (4, 4), 4)
    for i in range(3):
        single = map_metrics(a[i], b[i], (4, 4), 4)
        for name in MAP_METRICS:
            assert batched[name][i] == pytest.approx(single[name])


def test_kendall_equals_scipy_on_batches_with_ties_and_in_chunks(monkeypatch):
    """The vectorised tau-b is scipy.stats.kendalltau's, row by row, ties included, whatever the chunking."""
    from scipy.stats import kendalltau

    from fvit_core import metrics

    rng = np.random.default_rng(7)
    for patches in (4, 64, 196):
        a = rng.random((40, patches))
        b = a + 0.5 * rng.random((40, patches))
        a[:6] = np.round(a[:6] * 3) / 3  # ties in the reference map
        b[4:9] = np.round(b[4:9] * 2) / 2  # ties in the other map
        expected = np.array([kendalltau(x, y).statistic for x, y in zip(a, b)])
        np.testing.assert_allclose(metrics.kendall(a, b), expected, rtol=0, atol=1e-15)
        monkeypatch.setattr(metrics, "_KENDALL_CHUNK_PAIRS", patches)  # one row per chunk
        np.testing.assert_allclose(metrics.kendall(a, b), expected, rtol=0, atol=1e-15)
        monkeypatch.undo()
    constant = np.vstack([np.ones(16), rng.random(16)])
    assert np.isnan(metrics.kendall(constant, rng.random((2, 16)))[0])
