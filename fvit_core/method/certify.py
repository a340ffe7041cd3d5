"""Certificates for the smoothed ViT (docs/METHOD.md, section 5).

- Class certificate: Cohen et al. 2019, PREDICT and CERTIFY from vote counts.
- Prediction stability: D_alpha(y~(x) || y~(x')) <= alpha R^2 / (2 sigma^2) for ||x - x'||_2 <= R.
- Top-k attention certificate: the Renyi-DP bound of Liu et al. (generalising Li et al. 2019) in
  the form stated in METHOD.md 5.3.
- Linf from L2: R / sqrt(n).

Radii and sigma are in [0, 1] pixel units, L2 over all n = 3*H*W input dimensions. The Monte
Carlo estimates (counts, smoothed attention) come from method.faithful_vit; this module turns
them into guarantees and does no sampling.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
# scipy.special here; scipy.stats and scipy.optimize (about 0.6 s of start-up, issue 24) are
# imported by the two functions that need them, which a default analysis never calls.
from scipy.special import betaincinv, logsumexp, ndtri

from numpy.typing import ArrayLike
from fvit_core.errors import InputError, SettingError

ABSTAIN = -1

# Renyi orders searched for the top-k radius; the bound is smooth in log(alpha), and the best
# order is refined between the grid neighbours of the best grid point.
DEFAULT_RENYI_ALPHAS = np.geomspace(1.0001, 1000.0, 2000)
# m^(1 - alpha) of a zero entry is infinite; entries are floored here (METHOD.md 5.3).
_ATTENTION_FLOOR = 1e-30
# ceil(beta * k) must not jump a step on round-off (0.3 * 10 = 3.0000000000000004).
_CEIL_SLACK = 1e-9


def _check_unit_interval(value: float, name: str, *, upper: float = 1.0) -> float:
    if not (isinstance(value, (int, float, np.floating)) and 0.0 < float(value) < upper):
        raise SettingError(f"{name} must be in (0, {upper:g}), got {value!r}")
    return float(value)


def _check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, (int, float, np.floating)) and math.isfinite(sigma) and sigma > 0):
        raise SettingError(f"sigma must be a positive noise std in pixel units (e.g. 0.25), got {sigma!r}")
    return float(sigma)


def _counts(values: ArrayLike, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    counts = np.asarray(values)
    if counts.ndim != 1 or counts.size < 2:
        raise InputError(f"{name} must be a 1-D vector of per-class counts (>= 2 classes), got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        if not np.all(np.isfinite(counts)) or np.any(counts != np.round(counts)):
            raise InputError(f"{name} must hold whole vote counts")
        counts = counts.astype(np.int64)
    if np.any(counts < 0):
        raise InputError(f"{name} has negative counts")
    return counts.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Class certificate (Cohen et al. 2019)
# --------------------------------------------------------------------------------------------


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower bound on a binomial proportion from n_a hits in n trials.

    The lower end of the two-sided Clopper-Pearson interval at level 1 - 2*alpha, as in Cohen
    et al.'s code. For n_a = n it is alpha^(1/n).
    """
    alpha = _check_unit_interval(alpha, "alpha", upper=0.5)
    if not (int(n) == n and int(n_a) == n_a and 0 <= n_a <= n and n >= 1):
        raise InputError(f"need whole numbers 0 <= n_a <= n with n >= 1, got n_a={n_a}, n={n}")
    if n_a == 0:
        return 0.0
    # The Clopper-Pearson lower end is the alpha quantile of Beta(n_a, n - n_a + 1), what
    # scipy.stats.binomtest(...).proportion_ci(method="exact") computes (equal to 1e-12 in the tests).
    return float(betaincinv(int(n_a), int(n) - int(n_a) + 1, alpha))


def _top_two(counts: np.ndarray) -> tuple[int, int]:
    order = np.argsort(-counts, kind="stable")  # ties go to the lower class index
    return int(order[0]), int(order[1])


def predict(counts: ArrayLike, alpha: float) -> int:
    """Cohen's PREDICT from vote counts (C,): the top class, or ABSTAIN.

    Two-sided binomial test of the top two counts against p = 1/2; abstain when its p-value
    exceeds alpha. Returns a class other than the smoothed classifier's with probability at
    most alpha.
    """
    alpha = _check_unit_interval(alpha, "alpha")
    counts = _counts(counts, "counts")
    first, second = _top_two(counts)
    n_top = int(counts[first] + counts[second])
    if n_top == 0:
        return ABSTAIN
    from scipy.stats import binomtest

    p_value = binomtest(int(counts[first]), n_top, p=0.5).pvalue
    return ABSTAIN if p_value > alpha else first


def certify_counts(
    counts_selection: ArrayLike, counts_estimation: ArrayLike, sigma: float, alpha: float
) -> tuple[int, float]:
    """Cohen's CERTIFY from vote counts: (class, L2 radius) or (ABSTAIN, 0.0).

    The class c_A is the top of the n0 selection counts; p_A_lower is the lower confidence
    bound on its share of the n fresh estimation counts. If p_A_lower >= 1/2 the smoothed
    classifier returns c_A everywhere within R = sigma * Phi^-1(p_A_lower) (pixel units),
    with probability at least 1 - alpha over the sampling.
    """
    sigma = _check_sigma(sigma)
    selection = _counts(counts_selection, "counts_selection")
    estimation = _counts(counts_estimation, "counts_estimation")
    if selection.shape != estimation.shape:
        raise InputError(
            f"selection and estimation counts need the same classes, got {selection.shape} and {estimation.shape}"
        )
    if estimation.sum() == 0:
        raise InputError("counts_estimation is empty: certify needs n >= 1 fresh samples")
    top = int(np.argmax(selection))
    p_a_lower = lower_confidence_bound(int(estimation[top]), int(estimation.sum()), alpha)
    if p_a_lower < 0.5:
        return ABSTAIN, 0.0
    return top, sigma * float(ndtri(p_a_lower))  # Phi^-1, as scipy.stats.norm.ppf


# --------------------------------------------------------------------------------------------
# Prediction stability and Linf conversion
# --------------------------------------------------------------------------------------------


def prediction_stability_bound(radius: float, sigma: float, renyi_alpha: float) -> float:
    """Upper bound alpha R^2 / (2 sigma^2) on D_alpha(y~(x) || y~(x')) for ||x - x'||_2 <= R.

    The Renyi divergence of two Gaussians N(x, sigma^2 I), N(x', sigma^2 I) of order alpha,
    which post-processing (denoise, classify, sample a label) cannot increase. In nats.
    """
    sigma = _check_sigma(sigma)
    if not (math.isfinite(radius) and radius >= 0):
        raise InputError(f"radius must be a finite L2 distance >= 0, got {radius!r}")
    if not (math.isfinite(renyi_alpha) and renyi_alpha > 0):
        raise SettingError(f"renyi_alpha must be a finite order > 0 (METHOD.md uses alpha > 1), got {renyi_alpha!r}")
    return float(renyi_alpha) * float(radius) ** 2 / (2.0 * sigma**2)


def linf_from_l2(radius: float, input_dim: int) -> float:
    """Linf radius covered by an L2 radius: ||d||_2 <= sqrt(n) ||d||_inf, so R / sqrt(n).

    input_dim is n = 3*H*W.
    """
    if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
        raise InputError(f"input_dim must be the number of input values 3*H*W (>= 1), got {input_dim!r}")
    if not (math.isfinite(radius) and radius >= 0):
        raise InputError(f"radius must be a finite L2 distance >= 0, got {radius!r}")
    return float(radius) / math.sqrt(int(input_dim))


# --------------------------------------------------------------------------------------------
# Top-k attention certificate (METHOD.md 5.3)
# --------------------------------------------------------------------------------------------


def topk_boundary_size(k: int, beta: float) -> int:
    """k0 = k - ceil(beta * k) + 1: how many of the top k may leave before V_k < beta."""
    return k - math.ceil(beta * k - _CEIL_SLACK) + 1


def _squared_radius(alpha: np.ndarray, boundary: np.ndarray, k0: int, sigma: float) -> np.ndarray:
    """(2 sigma^2 / alpha) * -log(1 - sum_S m + 2 k0 M_{1-alpha}(S)), clipped at 0, per alpha.

    M_{1-alpha}(S) = [(1/(2 k0)) sum_S m^(1-alpha)]^(1/(1-alpha)) is the power mean of order
    1 - alpha < 1, so the log's argument is 1 - delta with delta = 2 k0 (mean(S) - M) >= 0.
    Both means are taken of S / max(S) in log space: no overflow for large alpha, and delta is
    exactly 0 when S is constant (a uniform m certifies nothing, not a round-off radius).
    """
    alpha = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    top = float(boundary.max())
    if top <= 0:
        return np.zeros_like(alpha)
    log_ratio = np.log(np.maximum(boundary, _ATTENTION_FLOOR)) - math.log(top)
    exponent = 1.0 - alpha[:, None]
    log_power_mean = (logsumexp(exponent * log_ratio[None, :], axis=1) - math.log(2 * k0)) / (1.0 - alpha)
    delta = 2 * k0 * top * (np.exp(log_ratio).mean() - np.exp(log_power_mean))
    # delta -> 1 only when S holds all the mass and an entry is 0: an infinite radius in exact
    # arithmetic; capped so estimates never certify infinity.
    gain = -np.log1p(-np.clip(delta, 0.0, 1.0 - 1e-15))
    return 2.0 * sigma**2 * gain / alpha


def topk_certified_radius(
    m: ArrayLike, k: int, beta: float, sigma: float, alphas: Sequence[float] | None = None
) -> float:
    """L2 radius R within which the smoothed attention keeps V_k >= beta (METHOD.md 5.3).

    Sort the normalised smoothed attention m (P,) descending; k0 = k - ceil(beta k) + 1; S the
    2 k0 entries of ranks k-k0+1 .. k+k0 (1-based). V_k(w~(x), w~(x')) >= beta for
    ||x - x'||_2 <= R if, for some alpha > 1,

        alpha R^2 / (2 sigma^2) < -log(1 - sum_S m + 2 k0 [(1/(2 k0)) sum_S m^(1-alpha)]^(1/(1-alpha)))

    The radius is the supremum over ``alphas`` (default: 2000 orders geometric in 1.0001..1000,
    then a bounded refinement around the best one; with ``alphas`` given, exactly those) of
    sqrt((2 sigma^2 / alpha) * -log(...)); 0 when the log's argument is not below 1 (e.g. a
    uniform m). Zero entries are floored at 1e-30 so m^(1-alpha) stays finite, and the log's
    argument at 1e-15 (a boundary holding all the mass with a zero entry would certify an
    infinite radius).

    Requires 1 <= k and k + k0 <= P (so k <= P - 1), 0 < beta <= 1, sigma > 0. The Monte Carlo
    error of m is not accounted for here.
    """
    sigma = _check_sigma(sigma)
    weights = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, dtype=np.float64)
    if weights.ndim != 1 or weights.size < 2 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise InputError("m must be a 1-D vector of P >= 2 non-negative finite attention weights")
    if weights.sum() <= 0:
        raise InputError("m sums to 0; pass a smoothed attention vector")
    if not (isinstance(beta, (int, float, np.floating)) and 0.0 < beta <= 1.0):
        raise SettingError(f"beta must be in (0, 1] (the top-k overlap to guarantee), got {beta!r}")
    size = weights.size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < size:
        raise SettingError(
            f"k must be an integer in 1..{size - 1} (P - 1: the bound compares ranks k and k+1), got {k!r}"
        )
    k0 = topk_boundary_size(int(k), float(beta))
    if k + k0 > size:
        raise SettingError(
            f"k={k}, beta={beta} gives k0={k0}: the bound needs ranks up to k + k0 = {k + k0} but P={size}; "
            "use a smaller k or a larger beta"
        )
    ordered = np.sort(weights / weights.sum())[::-1]
    boundary = ordered[k - k0 : k + k0]
    grid = DEFAULT_RENYI_ALPHAS if alphas is None else _check_alphas(alphas)
    squared = _squared_radius(grid, boundary, k0, sigma)
    best = int(np.argmax(squared))
    best_squared = float(squared[best])
    if alphas is None and best_squared > 0:
        best_squared = max(best_squared, _refine(grid, best, boundary, k0, sigma))
    return math.sqrt(best_squared)


def _check_alphas(alphas: Sequence[float]) -> np.ndarray:
    grid = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 1.0):
        raise SettingError("alphas must be a non-empty list of finite Renyi orders > 1")
    return grid


def _refine(grid: np.ndarray, best: int, boundary: np.ndarray, k0: int, sigma: float) -> float:
    """Maximise the squared radius over log(alpha) between the best grid point's neighbours."""
    low, high = math.log(grid[max(best - 1, 0)]), math.log(grid[min(best + 1, grid.size - 1)])
    if high <= low:
        return 0.0
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_alpha: -float(_squared_radius(np.exp([log_alpha]), boundary, k0, sigma)[0]),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return -float(result.fun)


def certified_accuracy(predictions: ArrayLike, labels: ArrayLike, radii: ArrayLike, at: ArrayLike) -> np.ndarray:
    """Cohen's certified accuracy: for each radius r of ``at``, the fraction of images whose
    CERTIFY prediction is their label (abstentions count as wrong) with certified radius >= r.
    ``predictions``, ``labels``, ``radii`` are per image; NaN for every r when there are none."""
    predictions, labels = np.asarray(predictions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    radii, at = np.asarray(radii, dtype=np.float64), np.asarray(at, dtype=np.float64)
    if not (predictions.shape == labels.shape == radii.shape):
        raise InputError(f"predictions, labels and radii must be per image, got shapes {predictions.shape}, "
                         f"{labels.shape}, {radii.shape}")
    if predictions.size == 0:
        return np.full(at.shape, np.nan)
    correct = (predictions == labels) & (predictions != ABSTAIN)
    return np.array([float(np.mean(correct & (radii >= r))) for r in at.ravel()]).reshape(at.shape)
