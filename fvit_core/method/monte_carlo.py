"""Monte Carlo estimates of the smoothed model: running sums, standard errors, early stopping.

docs/METHOD.md, section 3. For each image x and samples i = 1..N the FViT accumulates

    FViT attention       w~(x) = mean_i w_i            (P,)
    smoothed prediction  y~(x) = mean_i softmax_i      (C,)
    vote counts          c[j]  = #{i : argmax p_i = j} (C,)

as running sums, with per-coordinate standard errors (:class:`SmoothedOutput`). With antithetic
draws (draw 2j + 1 uses the negated noise of draw 2j) the means are the same formulas, but the
draws of a pair are dependent: the standard errors, the bootstrap and Cohen's vote counts use the
independent units, the N/2 pair means (SE, bootstrap) or the N/2 first draws of the pairs (votes).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

from fvit_core.errors import SettingError
from fvit_core.method.settings import EarlyStopSettings


@dataclass
class SmoothedOutput:
    """Monte Carlo estimates for one image (numpy; probabilities and attention sum to 1).

    Attributes:
        attention: (P,) mean explanation w~(x).
        attention_se: (P,) per-coordinate standard error of that mean.
        probs: (C,) smoothed prediction distribution y~(x); probs_se its standard error.
        votes: (C,) int64 hard-vote counts.
        n_samples: N actually drawn (1 for denoise-only; fewer than asked when stopped early).
        t_star: denoising timestep (None for rs).
        denoised_sample: (3, H, W) the first model input, for display.
        samples_attention: (N, P) per-sample maps, only when asked for (bootstrap), else None.
        stopped_early: True when :class:`EarlyStop` ended the loop before ``n_samples``.
        relevance: (P,) mean signed relevance of the signed methods (explanations.settings.
            SIGNED_METHODS; each draw's divided by its absolute sum), else None.
        scheme: how the draws were made (method.settings.SAMPLING_SCHEMES).
        independent_votes: (C,) votes of the independent draws only: all of them, or the first
            draw of each antithetic pair (what Cohen's binomial bounds may count).
    """

    attention: np.ndarray
    attention_se: np.ndarray
    probs: np.ndarray
    probs_se: np.ndarray
    votes: np.ndarray
    n_samples: int
    t_star: int | None
    denoised_sample: np.ndarray
    samples_attention: np.ndarray | None = None
    stopped_early: bool = False
    relevance: np.ndarray | None = None
    scheme: str = "independent"
    independent_votes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.independent_votes is None:
            self.independent_votes = self.votes

    @property
    def label(self) -> int:
        """Predicted class of the smoothed distribution y~ (soft smoothed classifier)."""
        return int(np.argmax(self.probs))

    @property
    def resampling_units(self) -> np.ndarray | None:
        """The independent units of the kept per-sample maps, (N, P) or, antithetic, the (N/2, P)
        pair means: what a bootstrap of this estimate resamples. None unless samples were kept."""
        samples = self.samples_attention
        if samples is None or self.scheme != "antithetic":
            return samples
        return (samples[0::2] + samples[1::2]) / 2.0


@dataclass(frozen=True)
class EarlyStop:
    """Stop the sample loop once the label and the top-k set of every image are settled.

    After every ``check_every`` samples per image, from ``min_samples`` on, the loop stops when
    for every image of the batch, with means m and standard errors se after n samples,

    - label:  m_p[c1] - m_p[c2] > z * (se_p[c1] + se_p[c2])   (c1, c2 the top two classes of y~)
    - top-k:  m_w[i] - m_w[j]   > z * (se_w[i] + se_w[j])     for every i in T_k, j outside it

    with z = Phi^-1(1 - alpha / looks) and looks the number of checks ``n_samples`` allows.
    se_i + se_j bounds the standard error of a difference whatever the correlation. "The label
    and T_k equal those of the N -> infinity limit" is an intersection of pairwise orderings, so
    each pair is tested at the full level (intersection-union test, Berger 1982) and Bonferroni
    over the looks keeps the chance of stopping with a wrong label or set below ``alpha``
    (normal approximation of each mean). Every image of a batch stops at the same N, so
    estimates compared with each other (clean, attacked, the noise floor's second clean
    estimate) always have equal sample counts.
    """

    k: int
    alpha: float = EarlyStopSettings.alpha
    check_every: int = 16
    min_samples: int = 32

    def __post_init__(self) -> None:
        for name in ("k", "check_every", "min_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(f"early stop {name} must be a whole number >= 1, got {value!r}")
        if not 0.0 < float(self.alpha) < 1.0:
            raise SettingError(f"early stop alpha must be in (0, 1), got {self.alpha!r}")

    def checkpoints(self, n_samples: int) -> list[int]:
        """The sample counts after which the rule is checked (none at the budget itself)."""
        return [n for n in range(self.check_every, n_samples, self.check_every) if n >= self.min_samples]

    def z(self, n_samples: int) -> float:
        """The per-comparison normal quantile, Bonferroni-corrected over the looks."""
        looks = max(len(self.checkpoints(n_samples)), 1)
        return NormalDist().inv_cdf(1.0 - float(self.alpha) / looks)


def settled(attention: np.ndarray, attention_se: np.ndarray, probs: np.ndarray, probs_se: np.ndarray,
            k: int, z: float) -> bool:
    """The :class:`EarlyStop` rule for one image: (P,) attention and (C,) probability means and SEs."""
    order_p = np.argsort(-probs, kind="stable")
    if len(order_p) > 1:
        c1, c2 = order_p[0], order_p[1]
        if not probs[c1] - probs[c2] > z * (probs_se[c1] + probs_se[c2]):
            return False
    if k >= len(attention):
        return True
    order_w = np.argsort(-attention, kind="stable")  # ties by lower index, as metrics.topk_indices
    inside, outside = order_w[:k], order_w[k:]
    gaps = attention[inside][:, None] - attention[outside][None, :]
    bounds = z * (attention_se[inside][:, None] + attention_se[outside][None, :])
    return bool((gaps > bounds).all())


class MonteCarloSums:
    """Streaming sums for the mean and standard error of per-sample vectors (float64 numpy: the
    calling thread adds while the workers compute, so it stays off torch's thread pool). Memory
    does not grow with N unless the per-sample maps are kept."""

    def __init__(self, n_images: int, dim_w: int, dim_p: int, keep: bool, antithetic: bool = False):
        self.antithetic = antithetic
        self.sw = np.zeros((n_images, dim_w))
        self.sw2 = np.zeros_like(self.sw)
        self.sp = np.zeros((n_images, dim_p))
        self.sp2 = np.zeros_like(self.sp)
        self.votes = np.zeros((n_images, dim_p), dtype=np.int64)
        self.independent_votes = np.zeros_like(self.votes) if antithetic else self.votes
        # Antithetic: squares of the pair means (the SEs' independent units) and the even draws
        # whose partner comes in a later batch.
        self.pw2 = np.zeros_like(self.sw) if antithetic else None
        self.pp2 = np.zeros_like(self.sp) if antithetic else None
        self.waiting: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.kept: list[tuple[np.ndarray, np.ndarray]] | None = [] if keep else None
        self.first: list[np.ndarray | None] = [None] * n_images
        self.signed: np.ndarray | None = None  # sums of signed relevances, when the method has them

    def add(self, image_idx: np.ndarray, w: np.ndarray, p: np.ndarray, firsts: dict[int, np.ndarray],
            signed: np.ndarray | None = None, sample_idx: np.ndarray | None = None) -> int:
        """Rows of one batch, in sample order: (b,) image index, (b, P) maps, (b, C) probabilities,
        the first model input of the images whose draw 0 it holds, (b, P) signed relevances
        (signed methods only) and (b,) sample index (needed for antithetic pairs). Returns b."""
        if self.antithetic:
            if sample_idx is None:
                raise ValueError("antithetic sums need each row's sample index")
            self._add_pairs(image_idx, np.asarray(sample_idx), w, p)
        if signed is not None:
            if self.signed is None:
                self.signed = np.zeros_like(self.sw)
            np.add.at(self.signed, image_idx, signed)
        np.add.at(self.sw, image_idx, w)
        np.add.at(self.sw2, image_idx, w * w)
        np.add.at(self.sp, image_idx, p)
        np.add.at(self.sp2, image_idx, p * p)
        np.add.at(self.votes, (image_idx, p.argmax(-1)), 1)
        for image, pixels in firsts.items():
            self.first[image] = pixels
        if self.kept is not None:
            self.kept.append((image_idx, w.astype(np.float32)))
        return len(image_idx)

    def _add_pairs(self, image_idx: np.ndarray, sample_idx: np.ndarray, w: np.ndarray, p: np.ndarray) -> None:
        """Antithetic: the squared pair means of the pairs this batch completes, and the votes of
        the pairs' first draws."""
        first = sample_idx % 2 == 0
        np.add.at(self.independent_votes, (image_idx[first], p[first].argmax(-1)), 1)
        rows = {(int(i), int(s)): r for r, (i, s) in enumerate(zip(image_idx.tolist(), sample_idx.tolist()))}
        for (image, sample), row in rows.items():
            if sample % 2 == 0:
                if (image, sample + 1) not in rows:
                    self.waiting[(image, sample // 2)] = (w[row].copy(), p[row].copy())
                continue
            partner = rows.get((image, sample - 1))
            w0, p0 = (w[partner], p[partner]) if partner is not None else self.waiting.pop((image, sample // 2))
            self.pw2[image] += ((w0 + w[row]) / 2.0) ** 2
            self.pp2[image] += ((p0 + p[row]) / 2.0) ** 2

    def mean_se(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(attention mean, its SE, probs mean, its SE), each (B, dim), after n samples per image.
        Antithetic: the SE of the mean of the n/2 independent pair means."""
        def one(s: np.ndarray, s2: np.ndarray, pair2: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            if pair2 is not None:  # the pair means sum to s / 2
                return s / n, standard_error(s / 2.0, pair2, n // 2) if n >= 4 else np.zeros_like(s)
            return s / n, standard_error(s, s2, n) if n > 1 else np.zeros_like(s)  # one sample: no spread known

        return (*one(self.sw, self.sw2, self.pw2), *one(self.sp, self.sp2, self.pp2))

    def settled(self, n: int, rule: EarlyStop, z: float) -> bool:
        w, w_se, p, p_se = self.mean_se(n)
        return all(settled(w[i], w_se[i], p[i], p_se[i], rule.k, z) for i in range(len(w)))

    def finish(self, n: int, t_star: int | None, stopped_early: bool) -> list[SmoothedOutput]:
        w_all, w_se, p_all, p_se = self.mean_se(n)
        samples = None
        if self.kept is not None:
            idx = np.concatenate([i for i, _ in self.kept])
            ws = np.concatenate([w for _, w in self.kept])
            samples = [ws[idx == i] for i in range(len(w_all))]  # batches come in sample order
        outs = []
        for i in range(len(w_all)):
            w, p = w_all[i], p_all[i]
            outs.append(SmoothedOutput(
                attention=w / w.sum(), attention_se=w_se[i], probs=p / p.sum(),
                probs_se=p_se[i], votes=self.votes[i].copy(), n_samples=n, t_star=t_star,
                denoised_sample=self.first[i], samples_attention=None if samples is None else samples[i],
                stopped_early=stopped_early, relevance=None if self.signed is None else self.signed[i] / n,
                scheme="antithetic" if self.antithetic else "independent",
                independent_votes=self.independent_votes[i].copy(),
            ))
        return outs


def standard_error(sum_: ArrayLike, sum_sq: ArrayLike, n: int) -> np.ndarray:
    """Per-coordinate standard error of a Monte Carlo mean from streamed sums.

    sum_ = sum_i v_i and sum_sq = sum_i v_i^2 over n samples (same shape, e.g. (P,) attention);
    returns sqrt(s^2 / n) with the unbiased sample variance s^2 = (sum_sq - sum_^2 / n) / (n - 1),
    clipped at 0 against round-off.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be the number of samples, at least 2 for a standard error, got {n!r}")
    totals = np.asarray(sum_, dtype=np.float64)
    squares = np.asarray(sum_sq, dtype=np.float64)
    if totals.shape != squares.shape:
        raise ValueError(f"sum_ and sum_sq must have the same shape, got {totals.shape} and {squares.shape}")
    variance = np.maximum((squares - totals**2 / n) / (n - 1), 0.0)
    return np.sqrt(variance / n)
