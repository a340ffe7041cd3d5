"""Top-k overlap and divergences against hand-computed values (docs/method.md, section 1)."""

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
