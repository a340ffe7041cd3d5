"""The Monte Carlo noise floor: how much two FViT estimates of the same clean image differ.

V_k between clean and attacked FViT maps means something only against this floor (docs/METHOD.md,
section 5: Monte Carlo error). Estimators (:data:`NOISE_FLOOR_ESTIMATORS`): ``independent`` (a
second clean estimate) or ``bootstrap`` (resamples of the clean estimate's own samples, no extra
model passes). Shared by ``fvit analyze`` and ``fvit eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fvit_core import metrics
from fvit_core.errors import SettingError
from fvit_core.method.monte_carlo import SmoothedOutput
from fvit_core.protocol.settings import Settings, bounded, one_of, setting

# How the Monte Carlo noise floor is estimated (docs/METRICS.md, "Noise floors"):
# - independent (the default since issue 25): V_k between the clean estimate and a second,
#   independent clean estimate with the same settings (a second batch of N samples; its votes
#   also give Cohen's CERTIFY the independent selection counts). The floor's definition, so
#   without bias: +0.001 [-0.004, +0.006] against 8 fresh pairs per image on 2 x 120 held-out images;
# - bootstrap: the mean V_k between the means of two bootstrap resamples (size N each) of the
#   clean estimate's own samples: no extra model passes, but it reads high, +0.0061 [+0.0022,
#   +0.0100] on the same images (N = 32 antithetic; benchmarks/bench_floor_bias.py): both
#   resamples scatter around the one sample mean, whose patches are further apart than the true
#   map's, so their top-k sets agree more often than two independent estimates' do.
NOISE_FLOOR_ESTIMATORS: tuple[str, ...] = ("independent", "bootstrap")
# What each estimator compares, in words: every summary and caption names the one it used.
FLOOR_DESCRIPTIONS: dict[str, str] = {
    "independent": "two independent clean estimates",
    "bootstrap": "bootstrap resamples of the clean estimate's draws, which reads about 0.006 high",
}


def floor_description(estimator: str | None) -> str:
    """The noise floor's estimator in words ("two independent clean estimates", ...)."""
    return FLOOR_DESCRIPTIONS.get(estimator or "independent", str(estimator))


@dataclass(frozen=True, kw_only=True)
class NoiseFloorSettings(Settings):
    """Whether the noise floor is estimated (``enabled``; flat name ``noise_floor``), by which
    ``estimator`` (:data:`NOISE_FLOOR_ESTIMATORS`), and the ``bootstrap`` resamples of the floor
    and of the V_k intervals."""

    enabled: bool = setting(True, json="noise_floor")
    estimator: str = setting("independent", json="noise_floor_estimator",
                             check=one_of("noise floor estimator", NOISE_FLOOR_ESTIMATORS))
    bootstrap: int = setting(200, check=bounded("bootstrap"))

    def check(self) -> None:
        if self.enabled and self.estimator == "bootstrap" and self.bootstrap < 1:
            raise SettingError("the bootstrap noise floor needs bootstrap >= 1 resamples (e.g. 200)")

    @property
    def second_estimate(self) -> bool:
        """Whether the floor needs a second clean estimate (the "independent" estimator)."""
        return self.enabled and self.estimator == "independent"

    @property
    def from_bootstrap(self) -> bool:
        """Whether the floor resamples the clean estimate's own samples (which it must then keep)."""
        return self.enabled and not self.second_estimate


def floor_pairs(floor: NoiseFloorSettings, clean: SmoothedOutput, second: SmoothedOutput | None,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Pairs of clean FViT maps whose differences are Monte Carlo noise only: (A, B), each (n, P).

    The same estimators as the V_k floor: the clean estimate and the independent second one
    (n = 1), or the means of two bootstrap resamples of the clean samples (n = floor.bootstrap).
    None when the noise floor is off or cannot be estimated.
    """
    if not floor.enabled:
        return None
    if second is not None:
        return clean.attention[None], second.attention[None]
    samples = clean.resampling_units  # the samples, or antithetic pair means: the independent units
    if samples is None or len(samples) < 2 or floor.bootstrap < 1:
        return None
    n = len(samples)
    idx = rng.integers(0, n, (2, floor.bootstrap, n))
    return _resample_means(samples, idx[0]), _resample_means(samples, idx[1])


def map_metrics_floor(pairs: tuple[np.ndarray, np.ndarray] | None, grid: tuple[int, int], k: int
                      ) -> dict[str, float | None] | None:
    """metrics.MAP_METRICS between noise-only pairs (floor_pairs), averaged over the pairs."""
    if pairs is None:
        return None
    values = metrics.map_metrics(pairs[0], pairs[1], grid, k)
    return {name: _nanmean(value) for name, value in values.items()}


def _nanmean(values: np.ndarray) -> float | None:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else None


def bootstrap_overlap(a: np.ndarray, b: np.ndarray, k: int, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile bootstrap interval of V_k between the means of two sets of samples (N, P)."""
    lo, hi = np.percentile(_bootstrap_overlaps(a, b, k, n_boot, rng), [2.5, 97.5])
    return (float(lo), float(hi))


def bootstrap_noise_floor(samples: np.ndarray, k: int, n_boot: int, rng: np.random.Generator
                          ) -> tuple[float, tuple[float, float]]:
    """The noise floor from one estimate's own samples (N, P), without new model passes.

    Two resamples of size N (with replacement) stand in for two independent N-sample estimates:
    returns the mean V_k between their means (an estimate of the expected floor) and the 95%
    percentile interval of those V_k values.
    """
    floor = _bootstrap_floor(samples, k, n_boot, rng)
    return floor.value, floor.ci


def _bootstrap_floor(samples: np.ndarray, k: int, n_boot: int, rng: np.random.Generator) -> "NoiseFloor":
    means_a, means_b = _bootstrap_means(samples, samples, n_boot, rng)
    values = np.asarray(metrics.topk_overlap(means_a, means_b, k))
    lo, hi = np.percentile(values, [2.5, 97.5])
    curve = metrics.overlap_curve(means_a, means_b).mean(axis=0)  # the same resamples for every k
    return NoiseFloor(float(values.mean()), (float(lo), float(hi)), curve)


def _bootstrap_overlaps(a: np.ndarray, b: np.ndarray, k: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) V_k between means of resamples of a and b."""
    return np.asarray(metrics.topk_overlap(*_bootstrap_means(a, b, n_boot, rng), k))


def _bootstrap_means(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, P) means of resamples of a and of b; the means are count-weighted sums, so memory
    is (n_boot, N) counts, not (n_boot, N, P) copies."""
    if n_boot < 1 or len(a) < 2 or len(b) < 2:
        raise SettingError("the bootstrap needs at least 2 samples per estimate and n_boot >= 1")
    idx_a = np.empty((n_boot, len(a)), dtype=np.int64)
    idx_b = np.empty((n_boot, len(b)), dtype=np.int64)
    for i in range(n_boot):  # the draw order of the original per-resample loop: same seed, same numbers
        idx_a[i] = rng.integers(0, len(a), len(a))
        idx_b[i] = rng.integers(0, len(b), len(b))
    return _resample_means(a, idx_a), _resample_means(b, idx_b)


def _resample_means(samples: np.ndarray, idx: np.ndarray) -> np.ndarray:
    n_boot, n = idx.shape
    counts = np.bincount((np.arange(n_boot)[:, None] * n + idx).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return counts.astype(np.float64) @ samples / n


class NoiseFloor(NamedTuple):
    """The noise floor of V_k at the analysis's k (``value``, its 95% interval ``ci`` or None) and
    for every k = 1..P (``curve``, from the same estimates: ``curve[k - 1] == value``); all None
    when there is no floor."""

    value: float | None = None
    ci: tuple[float, float] | None = None
    curve: np.ndarray | None = None


def noise_floor_estimate(floor: NoiseFloorSettings, k: int, clean: SmoothedOutput, second: SmoothedOutput | None,
                         rng: np.random.Generator) -> NoiseFloor:
    """The noise floor for the chosen estimator (an empty :class:`NoiseFloor` when off).

    The second estimate (``second``) when the estimator is "independent", else the bootstrap of
    the clean samples. ``rng``: protocol/seeds' "bootstrap" stage, purpose "floor"."""
    if not floor.enabled or clean.samples_attention is None and second is None:
        return NoiseFloor()
    if second is not None:
        value = float(metrics.topk_overlap(clean.attention, second.attention, k))
        ci = None
        if floor.bootstrap > 0 and clean.samples_attention is not None and len(clean.resampling_units) > 1:
            ci = bootstrap_overlap(clean.resampling_units, second.resampling_units, k, floor.bootstrap, rng)
        return NoiseFloor(value, ci, metrics.overlap_curve(clean.attention, second.attention))
    units = clean.resampling_units  # antithetic: the pair means, so both resamples use the same scheme
    if len(units) < 2:
        return NoiseFloor()
    return _bootstrap_floor(units, k, floor.bootstrap, rng)
