"""Certificate formulas against hand-computed cases (docs/METHOD.md, section 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta as beta_dist
from scipy.stats import norm

from fvit_core.method.monte_carlo import standard_error
from fvit_core.method.certify import (
    ABSTAIN,
    DEFAULT_RENYI_ALPHAS,
    certify_counts,
    linf_from_l2,
    lower_confidence_bound,
    predict,
    prediction_stability_bound,
    topk_boundary_size,
    topk_certified_radius,
)

# ---------------------------------------------------------------------------------- Cohen


@pytest.mark.parametrize("n,alpha", [(10, 0.05), (100, 0.001), (1000, 0.01)])
def test_lower_bound_all_hits_is_alpha_root_n(n, alpha):
    # Two-sided level 1 - 2 alpha puts alpha in the lower tail: P(all n hits | p) = p^n = alpha.
    assert lower_confidence_bound(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-9)


def test_lower_bound_matches_clopper_pearson_beta_quantile():
    # Clopper-Pearson lower end: the alpha quantile of Beta(n_a, n - n_a + 1).
    assert lower_confidence_bound(90, 100, 0.001) == pytest.approx(beta_dist.ppf(0.001, 90, 11), rel=1e-9)
    assert lower_confidence_bound(0, 50, 0.05) == 0.0


@pytest.mark.parametrize("n", [1, 2, 7, 32, 100, 1000, 100_000])
@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.25, 0.49])
def test_lower_bound_equals_scipy_binomtest_exact_interval(n, alpha):
    # The bound is computed from scipy.special (no scipy.stats at start-up, issue 24); it must
    # stay the number Cohen et al.'s code gets from the exact binomial test's interval.
    from scipy.stats import binomtest

    for n_a in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        expected = binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        assert lower_confidence_bound(n_a, n, alpha) == pytest.approx(expected, abs=1e-12)


def test_certified_radius_uses_the_normal_quantile():
    top, radius = certify_counts([0, 90, 10], [0, 95, 5], sigma=0.25, alpha=0.001)
    assert top == 1
    assert radius == pytest.approx(0.25 * norm.ppf(beta_dist.ppf(0.001, 95, 6)), rel=1e-10)


def test_lower_bound_validation():
    with pytest.raises(ValueError, match="alpha"):
        lower_confidence_bound(5, 10, 0.5)
    with pytest.raises(ValueError, match="n_a <= n"):
        lower_confidence_bound(11, 10, 0.01)


def test_certify_radius_is_sigma_times_normal_quantile():
    selection, estimation = np.array([2, 95, 3]), np.array([10, 980, 10])
    cls, radius = certify_counts(selection, estimation, sigma=0.25, alpha=0.001)
    p_lower = beta_dist.ppf(0.001, 980, 21)
    assert cls == 1
    assert radius == pytest.approx(0.25 * norm.ppf(p_lower), rel=1e-9)
    assert 0.25 * norm.ppf(0.98) > radius > 0.25 * norm.ppf(0.95)  # below the plug-in radius


def test_certify_all_hits_radius():
    cls, radius = certify_counts([0, 100], [0, 100], sigma=0.5, alpha=0.001)
    assert cls == 1 and radius == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 100)))


def test_certify_abstains_when_counts_are_split():
    assert certify_counts([50, 50], [520, 480], sigma=0.25, alpha=0.001) == (ABSTAIN, 0.0)
    # The selected class, not the estimation winner, is what gets certified.
    assert certify_counts([1, 9], [990, 10], sigma=0.25, alpha=0.001) == (ABSTAIN, 0.0)


def test_predict_binomial_test():
    assert predict([0, 90, 10], alpha=0.001) == 1
    assert predict([48, 52, 0], alpha=0.05) == ABSTAIN
    # 15 of 20 has a two-sided p-value 0.0414: accepted at 0.05, abstains at 0.01.
    assert predict([5, 15], alpha=0.05) == 1
    assert predict([5, 15], alpha=0.01) == ABSTAIN
    assert predict([0, 0, 0], alpha=0.05) == ABSTAIN


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan")])
def test_certify_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        certify_counts([1, 9], [1, 99], sigma=sigma, alpha=0.001)


def test_counts_validation():
    with pytest.raises(ValueError, match="whole vote counts"):
        predict([0.5, 1.5], alpha=0.05)
    with pytest.raises(ValueError, match="same classes"):
        certify_counts([1, 2], [1, 2, 3], sigma=0.25, alpha=0.001)


# ---------------------------------------------------------------------------------- stability, Linf


def test_prediction_stability_bound():
    assert prediction_stability_bound(0.5, 0.25, 2.0) == pytest.approx(2.0 * 0.25 / (2 * 0.0625))  # = 4
    assert prediction_stability_bound(0.0, 0.25, 10.0) == 0.0
    with pytest.raises(ValueError, match="radius"):
        prediction_stability_bound(-1.0, 0.25, 2.0)


def test_linf_from_l2():
    assert linf_from_l2(0.5, 3 * 32 * 32) == pytest.approx(0.5 / math.sqrt(3072))
    with pytest.raises(ValueError, match="input_dim"):
        linf_from_l2(0.5, 0)


# ---------------------------------------------------------------------------------- top-k radius


def _li_top1_radius(m: np.ndarray, sigma: float, alphas: np.ndarray) -> float:
    """Li et al. 2019 top-1 bound, written independently: S = {m1, m2}."""
    m1, m2 = np.sort(m / m.sum())[::-1][:2]
    best = 0.0
    for a in alphas:
        inner = ((m1 ** (1 - a) + m2 ** (1 - a)) / 2) ** (1 / (1 - a))
        gain = -math.log(1 - m1 - m2 + 2 * inner)
        if gain > 0:
            best = max(best, 2 * sigma**2 * gain / a)
    return math.sqrt(best)


def test_boundary_size():
    assert topk_boundary_size(1, 1.0) == 1
    assert topk_boundary_size(8, 1.0) == 1
    assert topk_boundary_size(8, 0.5) == 5  # 4 of 8 may leave
    assert topk_boundary_size(10, 0.3) == 8  # ceil(3.0000000000000004) must be 3


@pytest.mark.parametrize("m", [[0.5, 0.3, 0.1, 0.1], [0.7, 0.1, 0.1, 0.05, 0.05], [0.3, 0.25, 0.25, 0.2]])
def test_top1_reduces_to_li_et_al(m):
    m = np.array(m)
    alphas = np.geomspace(1.001, 200, 400)
    expected = _li_top1_radius(m, 0.25, alphas)
    assert expected > 0
    assert topk_certified_radius(m, 1, 1.0, 0.25, alphas=alphas) == pytest.approx(expected, rel=1e-9)
    # The default grid plus refinement can only find a larger supremum, and not by much.
    refined = topk_certified_radius(m, 1, 1.0, 0.25)
    assert expected * (1 - 1e-6) <= refined <= expected * 1.01


def test_general_k_beta_matches_the_formula_term_by_term():
    m = np.sort(np.random.default_rng(4).dirichlet(np.ones(16)))[::-1]
    k, beta, sigma, alphas = 6, 0.5, 0.3, np.geomspace(1.01, 100, 300)
    k0 = 6 - 3 + 1
    s = m[k - k0 : k + k0]  # ranks 3..10 (1-based)
    best = 0.0
    for a in alphas:
        gain = -math.log(1 - s.sum() + 2 * k0 * (np.sum(s ** (1 - a)) / (2 * k0)) ** (1 / (1 - a)))
        best = max(best, 2 * sigma**2 * gain / a)
    shuffled = np.random.default_rng(5).permutation(m)  # order of the input must not matter
    assert topk_certified_radius(shuffled, k, beta, sigma, alphas=alphas) == pytest.approx(math.sqrt(best), rel=1e-9)


def test_radius_grows_with_gap_at_the_topk_boundary():
    radii = []
    for gap in (0.0, 0.02, 0.05, 0.1, 0.2):
        m = np.full(16, 0.05)
        m[:4] += gap / 4  # top-4 above the boundary by `gap` in total
        radii.append(topk_certified_radius(m, 4, 1.0, 0.25))
    assert radii[0] == 0.0
    assert all(b > a for a, b in zip(radii, radii[1:]))


def test_radius_zero_for_uniform_attention_and_scales_with_sigma():
    assert topk_certified_radius(np.full(64, 1 / 64), 8, 0.75, 0.25) == 0.0
    m = np.array([0.4, 0.3, 0.1, 0.1, 0.05, 0.05])
    assert topk_certified_radius(m, 2, 1.0, 0.5) == pytest.approx(2 * topk_certified_radius(m, 2, 1.0, 0.25))


def test_lower_beta_certifies_a_larger_radius():
    m = np.sort(np.random.default_rng(0).dirichlet(np.ones(64) * 0.5))[::-1]
    strict = topk_certified_radius(m, 8, 1.0, 0.25)
    loose = topk_certified_radius(m, 8, 0.5, 0.25)
    assert loose > strict > 0


def test_radius_handles_zero_entries_and_unnormalised_input():
    m = np.array([3.0, 1.0, 0.0, 0.0])  # normalised to [0.75, 0.25, 0, 0]
    radius = topk_certified_radius(m, 1, 1.0, 0.25)
    assert math.isfinite(radius) and radius > 0
    assert radius == pytest.approx(topk_certified_radius(m / 4, 1, 1.0, 0.25))


@pytest.mark.parametrize(
    "k,beta,match",
    [(0, 1.0, r"1\.\.15"), (16, 1.0, r"1\.\.15"), (12, 0.5, "k0=7"), (4, 0.0, "beta"), (4, 1.5, "beta")],
)
def test_topk_radius_validation(k, beta, match):
    with pytest.raises(ValueError, match=match):
        topk_certified_radius(np.full(16, 1 / 16), k, beta, 0.25)


def test_default_alpha_grid():
    assert DEFAULT_RENYI_ALPHAS[0] > 1 and DEFAULT_RENYI_ALPHAS[-1] == pytest.approx(1000)


# ---------------------------------------------------------------------------------- Monte Carlo


def test_standard_error_matches_numpy():
    samples = np.random.default_rng(3).random((50, 4))
    se = standard_error(samples.sum(0), (samples**2).sum(0), 50)
    np.testing.assert_allclose(se, samples.std(axis=0, ddof=1) / math.sqrt(50))
    np.testing.assert_allclose(standard_error(np.full(3, 5.0), np.full(3, 5.0), 5), 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        standard_error(np.ones(3), np.ones(3), 1)


def _smoothed_topk_indicator(x: np.ndarray, k: int, sigma: float, noise: np.ndarray) -> np.ndarray:
    """m(x) = E[top-k indicator of x + delta] / k, a smoothed 'attention' over P = x.size entries."""
    top = np.argsort(-(x + sigma * noise), axis=1, kind="stable")[:, :k]
    return np.bincount(top.ravel(), minlength=x.size) / (noise.shape[0] * k)


@pytest.mark.parametrize("k", [1, 2])
def test_topk_radius_holds_under_monte_carlo_perturbations(k):
    """METHOD.md 5.3: perturbations inside the radius keep the top-k; well beyond it they need not."""
    from fvit_core.metrics import topk_overlap

    rng = np.random.default_rng(0)
    sigma, noise = 0.25, rng.standard_normal((200_000, 6))
    x = np.array([1.0, 0.8, 0.6, 0.3, 0.1, 0.0])
    m = _smoothed_topk_indicator(x, k, sigma, noise)
    radius = topk_certified_radius(m, k, 1.0, sigma)
    assert radius > 0.05
    swap = np.zeros(6)
    swap[k - 1], swap[k] = -1 / math.sqrt(2), 1 / math.sqrt(2)  # the cheapest way to swap ranks k, k+1
    directions = [swap] + [u / np.linalg.norm(u) for u in rng.standard_normal((10, 6))]
    for u in directions:
        assert topk_overlap(m, _smoothed_topk_indicator(x + radius * u, k, sigma, noise), k) == 1.0
    assert topk_overlap(m, _smoothed_topk_indicator(x + 3 * radius * swap, k, sigma, noise), k) < 1.0


def test_certified_accuracy_at_radii_counts_abstentions_and_wrong_classes_as_uncertified():
    from fvit_core.method.certify import ABSTAIN, certified_accuracy

    predictions = [2, ABSTAIN, 0, 1, 5]
    labels = [2, ABSTAIN, 0, 4, 5]  # an abstention never counts, even where the "label" is -1
    radii = [0.5, 0.7, 0.2, 0.9, 0.0]
    assert certified_accuracy(predictions, labels, radii, [0.0, 0.2, 0.3, 0.6]).tolist() == [0.6, 0.4, 0.2, 0.0]
    assert np.isnan(certified_accuracy([], [], [], [0.0, 0.5])).all()
    with pytest.raises(ValueError, match="per image"):
        certified_accuracy([1, 2], [1], [0.1, 0.2], [0.0])
