"""One analysis: attack an image, then compare the vanilla ViT with the Faithful ViT (DDS).

:func:`analyze` is the single call that the dashboard and the command line share. It returns an
:class:`AnalysisResult` of plain numpy arrays and numbers (no tensors, no modules), which
:meth:`AnalysisResult.to_json` turns into the documented JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fvit_core.data.pixels import check_pixels
from fvit_core.errors import InputError, SettingError
from fvit_core.method import certify

from fvit_core.protocol import limits

from fvit_core.analysis import metrics
from fvit_core.attacks.registry import ATTACKS, get_attack, run_attack
from fvit_core.explanations.attention import EXPLANATION_METHODS, HEAD_FUSIONS
from fvit_core.method.denoise import check_schedule
from fvit_core.data.images import PREPARE_MODES, image_digest, prepare_image
from fvit_core.models.loading import ModelPair, load_pair
from fvit_core.method.pixel_space import resize_pixels, smoothing_size
from fvit_core.explanations.sensitivity import SENSITIVITY_NORMS, ball_perturbations, check_sensitivity_settings, relative_change, sensitivity
from fvit_core.method.smoothing import (PRECISION_CHOICES, SMOOTHING_MODES, EarlyStop, SmoothedOutput, resolve_precision,
                        smooth, submit_single_threaded, vanilla)

ProgressFn = Callable[[str, float], None]

# How the Monte Carlo noise floor is estimated (docs/PERFORMANCE.md compares them):
# - independent: V_k between the clean estimate and a second, independent clean estimate with
#   the same settings (a third batch of N samples; its votes also give Cohen's CERTIFY the
#   independent selection counts);
# - bootstrap: the mean V_k between the means of two bootstrap resamples (size N each) of the
#   clean estimate's own samples: no extra model passes, an estimate of the expected floor.
NOISE_FLOOR_ESTIMATORS: tuple[str, ...] = ("independent", "bootstrap")
# The numeric settings of an analysis, each checked against limits.BOUNDS.
ANALYSIS_NUMBERS: tuple[str, ...] = ("sigma", "n_samples", "batch_size", "bootstrap", "multistep_steps", "k", "beta",
                                     "confidence_alpha", "renyi_alpha", "early_stop_alpha", "eps", "steps", "seed",
                                     "sensitivity_samples", "sensitivity_radius")


@dataclass
class AnalysisConfig:
    """Every setting of one analysis; a JSON file of these fields reproduces it (``--config``).

    Units: sigma, eps and radii in [0, 1] pixel units (eps 8/255 for Linf, 0.5 for L2).

    Cost settings (docs/PERFORMANCE.md measures each): ``precision`` "auto" (the default) runs the
    DDS networks in bfloat16 where the device computes it natively, else float32
    (smoothing.resolve_precision); ``early_stop`` ends sampling once label and top-k set are
    settled at level ``early_stop_alpha`` (smoothing.EarlyStop); ``noise_floor_estimator``
    "bootstrap" (the default) estimates the noise floor from the clean samples, "independent"
    from a third batch of N samples (whose votes then also serve as Cohen's selection counts;
    otherwise the vanilla ViT's clean prediction is the selection, which is just as valid).
    """

    model: str = "default"
    classifier: str | None = None
    denoiser: str | None = None
    attack: str = "pgd"
    eps: float | None = None
    steps: int | None = None
    attack_params: dict = field(default_factory=dict)
    method: str = "raw"
    head_fusion: str = "mean"
    mode: str = "dds"
    sigma: float = 0.25
    n_samples: int = 64
    k: int = 8
    beta: float = 0.5
    renyi_alpha: float = 2.0
    confidence_alpha: float = 0.001
    shared_noise: bool = False
    noise_floor: bool = True
    bootstrap: int = 200
    multistep_steps: int = 10
    image_mode: str = "resize"
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    early_stop: bool = False
    early_stop_alpha: float = 0.05
    noise_floor_estimator: str = "bootstrap"
    # Neighbourhood sensitivity (fvit_core/explanations/sensitivity.py): M random perturbations in the
    # sensitivity_norm ball of sensitivity_radius around the clean image; 0 switches it off.
    # Costs M vanilla explanations and M smoothed estimates of n_samples each (M <= 64).
    sensitivity_samples: int = 0
    sensitivity_radius: float = 0.02
    sensitivity_norm: str = "Linf"

    def attack_arguments(self) -> dict:
        """The attack's parameters: ``attack_params`` with the ``eps`` / ``steps`` shortcuts applied."""
        params = dict(self.attack_params)
        spec = get_attack(self.attack)
        names = {p.name for p in spec.params}
        for name, value in (("eps", self.eps), ("steps", self.steps)):
            if value is None:
                continue
            if name not in names:
                raise SettingError(f"attack {self.attack!r} has no parameter {name!r}; its parameters: "
                                 f"{', '.join(sorted(names)) or 'none'}")
            params[name] = value
        if "eps" in params and "alpha" in names and "alpha" not in self.attack_params and spec.norm == "Linf":
            params["alpha"] = float(params["eps"]) / 5.0  # the paper's PGD step: eps / 5
        if self.attack == "eot_dds" and "sigma" in names and "sigma" not in params:
            params["sigma"] = self.sigma  # the adaptive attack targets the FViT being analysed
        return params

    def validate(self, num_patches: int | None = None) -> None:
        """Raise ValueError with an actionable message for any invalid setting.

        Settings come from users (flags, settings files, the dashboard), so types are checked
        too: a settings file with ``"eps": "8/255"`` or ``"shared_noise": "false"`` is refused
        instead of failing deep inside (or, for the string, being silently true).
        """
        self._check_types()
        if self.attack not in ATTACKS:
            raise SettingError(f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACKS)}")
        if self.method not in EXPLANATION_METHODS:
            raise SettingError(f"unknown method {self.method!r}; choose one of {', '.join(EXPLANATION_METHODS)}")
        if self.head_fusion not in HEAD_FUSIONS:
            raise SettingError(f"unknown head fusion {self.head_fusion!r}; choose one of {', '.join(HEAD_FUSIONS)}")
        if self.mode not in SMOOTHING_MODES:
            raise SettingError(f"unknown mode {self.mode!r}; choose one of {', '.join(SMOOTHING_MODES)}")
        # Every number against its documented bounds (limits.BOUNDS), before any work.
        limits.check_settings(self, ANALYSIS_NUMBERS, lows={"n_samples": 2 if self.noise_floor else 1})
        if self.precision not in PRECISION_CHOICES:
            raise SettingError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        if self.noise_floor_estimator not in NOISE_FLOOR_ESTIMATORS:
            raise SettingError(f"noise_floor_estimator must be one of {', '.join(NOISE_FLOOR_ESTIMATORS)}, "
                             f"got {self.noise_floor_estimator!r}")
        if self.bootstrap * self.n_samples > limits.MAX_BOOTSTRAP_DRAWS:
            raise SettingError(f"bootstrap x n_samples = {self.bootstrap:,} x {self.n_samples:,} is over the limit of "
                             f"{limits.MAX_BOOTSTRAP_DRAWS:,} (about 40 bytes each); use at most "
                             f"{limits.MAX_BOOTSTRAP_DRAWS // self.n_samples:,} bootstrap resamples")
        if self.noise_floor and self.noise_floor_estimator == "bootstrap" and self.bootstrap < 1:
            raise SettingError("the bootstrap noise floor needs bootstrap >= 1 resamples (e.g. 200)")
        if self.image_mode not in PREPARE_MODES:
            raise SettingError(f"image_mode must be one of {', '.join(PREPARE_MODES)}, got {self.image_mode!r}")
        if num_patches is not None and self.k > num_patches:
            raise SettingError(f"k={self.k} exceeds the model's {num_patches} patches; choose k in 1..{num_patches}")
        if self.sensitivity_samples:
            check_sensitivity_settings(self.sensitivity_samples, self.sensitivity_radius, self.sensitivity_norm)
        elif self.sensitivity_norm not in SENSITIVITY_NORMS:
            raise SettingError(f"sensitivity_norm must be one of {', '.join(SENSITIVITY_NORMS)}, got {self.sensitivity_norm!r}")
        get_attack(self.attack).resolve(self.attack_arguments())

    def _check_types(self) -> None:
        """Every field against its annotation (str, bool, int, float, dict, optionally None), so a
        field added later is checked too; ranges are validate()'s job."""
        for spec in dataclasses.fields(self):
            value, kinds = getattr(self, spec.name), [k.strip() for k in str(spec.type).split("|")]
            if value is None and "None" in kinds:
                continue
            allowed = tuple(t for kind in kinds for t in _FIELD_TYPES.get(kind, ()))
            if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
                wanted = " or ".join(_FIELD_WORDS[kind] for kind in kinds if kind in _FIELD_WORDS)
                raise SettingError(f"{spec.name} must be {wanted}, got {limits.short_repr(value)}")
        if not all(isinstance(key, str) for key in self.attack_params):
            raise SettingError(f"attack_params must map parameter names to values, got {limits.short_repr(self.attack_params)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AnalysisConfig":
        if not isinstance(data, dict):
            raise SettingError(f"settings must be a JSON object of name: value pairs, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            shown = ", ".join(limits.short_repr(name, 40).strip("'") for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise SettingError(f"unknown settings {shown}; known: {', '.join(sorted(names))}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "AnalysisConfig":
        text = limits.read_settings_text(path, "settings file")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"cannot read settings file {path}: {limits.short_repr(str(exc), 200)}") from exc
        if not isinstance(data, dict):
            raise InputError(f"settings file {path} must hold a JSON object")
        return cls.from_dict(data.get("config", data))


_FIELD_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float),
                                              "dict": (dict,)}
_FIELD_WORDS = {"str": "a string", "bool": "true or false", "int": "a whole number", "float": "a number",
                "dict": "a mapping of parameter names to values", "None": "null"}


@dataclass
class ImageView:
    """One model on one image: prediction and explanation."""

    label: int
    label_name: str
    confidence: float
    probs: np.ndarray
    attention: np.ndarray

    def to_json(self) -> dict:
        return {"label": self.label, "label_name": self.label_name, "confidence": self.confidence,
                "probs": self.probs.tolist(), "attention": self.attention.tolist()}


@dataclass
class ModelComparison:
    """Clean vs attacked for one model (vanilla ViT or FViT)."""

    clean: ImageView
    attacked: ImageView
    topk_overlap: float
    overlap_curve: np.ndarray
    divergences: dict[str, float]
    label_flip: bool
    # metrics.MAP_METRICS of the attacked map against the clean one (None: undefined, a flat map)
    map_metrics: dict[str, float | None] = field(default_factory=dict)
    # {"max", "mean"} neighbourhood sensitivity of the clean map (FViT: plus "floor"); None when off
    sensitivity: dict[str, float] | None = None

    def to_json(self) -> dict:
        return {"clean": self.clean.to_json(), "attacked": self.attacked.to_json(),
                "topk_overlap": self.topk_overlap, "overlap_curve": self.overlap_curve.tolist(),
                "divergences": self.divergences, "label_flip": self.label_flip,
                "map_metrics": self.map_metrics, "sensitivity": self.sensitivity}


@dataclass
class Certificates:
    """Guarantees of the FViT at the clean image (docs/METHOD.md, section 5). Radii in pixel units."""

    predicted_class: int
    class_radius: float
    topk_radius_l2: float
    topk_radius_linf: float
    p_a_lower: float
    perturbation_l2: float
    prediction_bound: float
    measured_renyi: float
    independent_selection: bool
    selection: str  # where CERTIFY's class guess came from: SELECTION_SOURCES

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FaithfulDetails:
    """What only the FViT has: Monte Carlo noise floor and uncertainty, votes, certificates."""

    mode: str
    sigma: float
    t_star: int | None
    n_samples: int  # drawn per estimate: fewer than config.n_samples when sampling stopped early
    precision: str  # what the DDS networks ran in (config "auto" resolved)
    noise_floor_estimator: str | None  # NOISE_FLOOR_ESTIMATORS, None when there is no floor
    topk_overlap_floor: float | None
    topk_overlap_ci: tuple[float, float] | None
    topk_overlap_floor_ci: tuple[float, float] | None
    votes_clean: np.ndarray
    votes_attacked: np.ndarray
    attention_se_clean: np.ndarray
    attention_se_attacked: np.ndarray
    certified: Certificates
    denoised_sample: np.ndarray
    # metrics.MAP_METRICS between two clean estimates (the same noise floor as V_k's); None when off
    map_metrics_floor: dict[str, float | None] | None = None
    stopped_early: bool = False  # early stopping (config.early_stop) ended sampling before config.n_samples

    def to_json(self) -> dict:
        return {
            "mode": self.mode, "sigma": self.sigma, "t_star": self.t_star, "n_samples": self.n_samples,
            "stopped_early": self.stopped_early,
            "precision": self.precision, "noise_floor_estimator": self.noise_floor_estimator,
            "topk_overlap_floor": self.topk_overlap_floor,
            "topk_overlap_ci": list(self.topk_overlap_ci) if self.topk_overlap_ci else None,
            "topk_overlap_floor_ci": list(self.topk_overlap_floor_ci) if self.topk_overlap_floor_ci else None,
            "votes": {"clean": self.votes_clean.tolist(), "attacked": self.votes_attacked.tolist()},
            "attention_se": {"clean": self.attention_se_clean.tolist(), "attacked": self.attention_se_attacked.tolist()},
            "certified": self.certified.to_json(),
            "map_metrics_floor": self.map_metrics_floor,
        }


@dataclass
class AnalysisResult:
    """Everything one analysis produced. Images are (3, H, W) float32 in [0, 1].

    ``clean_image`` and ``attacked_image`` are in the analysis' pixel space (``pixel_size``: the
    denoiser's size with a denoiser, pixel_space.smoothing_size), where noise, perturbation norms
    and radii live; ``clean_view`` and ``attacked_view`` are the same images as the classifier saw
    them (resized to ``classifier_size``), which the attention maps are drawn over.
    """

    config: AnalysisConfig
    class_names: tuple[str, ...]
    grid_size: tuple[int, int]
    image_digest: str
    clean_image: np.ndarray
    attacked_image: np.ndarray
    attack: dict
    vanilla: ModelComparison
    fvit: ModelComparison
    faithful: FaithfulDetails
    timing: dict[str, float]
    clean_view: np.ndarray
    attacked_view: np.ndarray

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(H, W) of the pixel space the analysis worked in."""
        return tuple(int(v) for v in self.clean_image.shape[1:])  # type: ignore[return-value]

    @property
    def classifier_size(self) -> tuple[int, int]:
        """(H, W) of the classifier's input."""
        return tuple(int(v) for v in self.clean_view.shape[1:])  # type: ignore[return-value]

    @property
    def perturbation(self) -> np.ndarray:
        return self.attacked_image - self.clean_image

    def to_json(self) -> dict:
        """The documented JSON (README, "fvit analyze"): plain lists and numbers only."""
        fvit = self.fvit.to_json()
        fvit.update(self.faithful.to_json())
        return {
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "grid_size": list(self.grid_size),
            "pixel_space": {"size": list(self.pixel_size), "classifier_input": list(self.classifier_size)},
            "image_digest": self.image_digest,
            "attack": self.attack,
            "vanilla": self.vanilla.to_json(),
            "fvit": fvit,
            "timing": self.timing,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)


# --------------------------------------------------------------------------------------------


class _Timer:
    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - since
        return now

    def finish(self) -> dict[str, float]:
        return {**self.parts, "total": time.perf_counter() - self._start}


def _view(probs: np.ndarray, attention: np.ndarray, names: tuple[str, ...]) -> ImageView:
    label = int(np.argmax(probs))
    return ImageView(label=label, label_name=names[label], confidence=float(probs[label]), probs=probs, attention=attention)


def _compare(clean: ImageView, attacked: ImageView, k: int, renyi_alpha: float, grid: tuple[int, int]
             ) -> ModelComparison:
    div = {name: float(v) for name, v in metrics.divergences(clean.probs, attacked.probs, renyi_alpha=renyi_alpha).items()}
    return ModelComparison(
        clean=clean, attacked=attacked,
        topk_overlap=float(metrics.topk_overlap(clean.attention, attacked.attention, k)),
        overlap_curve=np.asarray(metrics.overlap_curve(clean.attention, attacked.attention), dtype=np.float64),
        divergences=div, label_flip=clean.label != attacked.label,
        map_metrics=metrics.map_metrics(clean.attention, attacked.attention, grid, k),
    )


def floor_pairs(cfg: AnalysisConfig, clean: SmoothedOutput, second: SmoothedOutput | None,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Pairs of clean FViT maps whose differences are Monte Carlo noise only: (A, B), each (n, P).

    The same estimators as the V_k floor: the clean estimate and the independent second one
    (n = 1), or the means of two bootstrap resamples of the clean samples (n = cfg.bootstrap).
    None when the noise floor is off or cannot be estimated.
    """
    if not cfg.noise_floor:
        return None
    if second is not None:
        return clean.attention[None], second.attention[None]
    samples = clean.samples_attention
    if samples is None or clean.n_samples < 2 or cfg.bootstrap < 1:
        return None
    n = len(samples)
    idx = rng.integers(0, n, (2, cfg.bootstrap, n))
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
    values = _bootstrap_overlaps(samples, samples, k, n_boot, rng)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(values.mean()), (float(lo), float(hi))


def _bootstrap_overlaps(a: np.ndarray, b: np.ndarray, k: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) V_k between means of resamples of a and b; the means are count-weighted sums,
    so memory is (n_boot, N) counts, not (n_boot, N, P) copies."""
    if n_boot < 1 or len(a) < 2 or len(b) < 2:
        raise SettingError("the bootstrap needs at least 2 samples per estimate and n_boot >= 1")
    idx_a = np.empty((n_boot, len(a)), dtype=np.int64)
    idx_b = np.empty((n_boot, len(b)), dtype=np.int64)
    for i in range(n_boot):  # the draw order of the original per-resample loop: same seed, same numbers
        idx_a[i] = rng.integers(0, len(a), len(a))
        idx_b[i] = rng.integers(0, len(b), len(b))
    return np.asarray(metrics.topk_overlap(_resample_means(a, idx_a), _resample_means(b, idx_b), k))


def _resample_means(samples: np.ndarray, idx: np.ndarray) -> np.ndarray:
    n_boot, n = idx.shape
    counts = np.bincount((np.arange(n_boot)[:, None] * n + idx).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return counts.astype(np.float64) @ samples / n


# Cohen's CERTIFY needs a class guess made independently of the estimation samples:
# - "second-estimate": the votes of the independent noise-floor estimate (Cohen's n0 counts);
# - "vanilla-prediction": the vanilla ViT's prediction on the clean image, a fixed function of the
#   image and so independent of the noise. When it is not the smoothed classifier's top class the
#   certificate abstains (valid, only less often certified);
# - "shared": the estimation votes themselves (only when neither is given; flagged).
SELECTION_SOURCES: tuple[str, ...] = ("second-estimate", "vanilla-prediction", "shared")


def _certificates(cfg: AnalysisConfig, clean: SmoothedOutput, selection: np.ndarray | None, source: str,
                  attacked: SmoothedOutput, perturbation_l2: float, input_dim: int, num_patches: int) -> Certificates:
    independent = selection is not None
    if selection is None:
        selection, source = clean.votes, "shared"
    cls, radius = certify.certify_counts(selection, clean.votes, cfg.sigma, cfg.confidence_alpha)
    n_a = int(clean.votes[cls]) if cls != certify.ABSTAIN else int(clean.votes.max())
    p_lower = certify.lower_confidence_bound(n_a, int(clean.votes.sum()), cfg.confidence_alpha)
    k_radius = 0.0
    # The bound compares ranks up to k + k0 (METHOD.md 5.3): for larger k (or k = P) nothing is
    # certified, which radius 0 states; denoise-only adds no noise, so it certifies nothing either.
    k0 = certify.topk_boundary_size(cfg.k, cfg.beta)
    if cfg.k + k0 <= num_patches and cfg.mode != "denoise-only":
        k_radius = certify.topk_certified_radius(clean.attention, cfg.k, cfg.beta, cfg.sigma)
    measured = metrics.divergences(clean.probs, attacked.probs, renyi_alpha=cfg.renyi_alpha)["renyi"]
    return Certificates(
        predicted_class=int(cls), class_radius=float(radius), topk_radius_l2=float(k_radius),
        topk_radius_linf=float(certify.linf_from_l2(k_radius, input_dim)), p_a_lower=float(p_lower),
        perturbation_l2=perturbation_l2,
        prediction_bound=float(certify.prediction_stability_bound(perturbation_l2, cfg.sigma, cfg.renyi_alpha)),
        measured_renyi=float(measured), independent_selection=independent, selection=source,
    )


def _as_tensor_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    check_pixels(arr, batched=False, what="image")
    return arr.astype(np.float32)


def analyze(
    image: np.ndarray | torch.Tensor,
    config: AnalysisConfig | None = None,
    *,
    pair: ModelPair | None = None,
    progress: ProgressFn | None = None,
) -> AnalysisResult:
    """Attack ``image`` and compare the vanilla ViT with the FViT on the clean and attacked image.

    Args:
        image: (3, H, W) float pixels in [0, 1] at any size; resized (or centre-cropped, per
            ``config.image_mode``) to the classifier's input size.
        config: the settings (defaults: PGD 8/255, 10 steps; DDS at sigma 0.25, 64 samples; top-8).
        pair: loaded models (default: :func:`models.load_pair` of ``config.model``). The models
            are only read, so one cached pair can serve several threads at once.
        progress: optional ``progress(stage, fraction)`` callback for progress bars.

    The attack is crafted on the vanilla ViT (transfer setting) unless the attack is the
    adaptive ``eot_dds``. Clean and attacked FViT estimates use independent noise unless
    ``shared_noise``; the noise floor is V_k between two independent clean estimates (or its
    bootstrap estimate, ``noise_floor_estimator="bootstrap"``).

    The attacked image and the vanilla ViT's views are cached per model, keyed by the image's
    digest and every setting they depend on (:func:`clear_cache`), so changing only smoothing
    settings (sigma, N, mode, ...) skips the attack. The attack is seeded, so a cached result
    is the one a fresh run would compute.
    """
    cfg = config or AnalysisConfig()
    return analyze_many(image, [cfg], pair=pair, progress=progress)[0]


def analyze_many(
    image: np.ndarray | torch.Tensor,
    configs: list[AnalysisConfig],
    *,
    pair: ModelPair | None = None,
    progress: ProgressFn | None = None,
) -> list[AnalysisResult]:
    """:func:`analyze` for each config, sharing the attack and vanilla passes between configs
    that differ only in smoothing settings (a sigma sweep crafts one attack). Results equal
    ``[analyze(image, c, pair=pair) for c in configs]``. ``progress`` spans all of them.
    """
    if not configs:
        raise SettingError("analyze_many needs at least one AnalysisConfig")
    pair = pair or load_pair(configs[0].model, classifier=configs[0].classifier, denoiser=configs[0].denoiser,
                             device=configs[0].device)
    report = progress or (lambda stage, fraction: None)
    results = []
    for i, cfg in enumerate(configs):
        share = (lambda stage, fraction, i=i: report(stage, (i + fraction) / len(configs)))
        results.append(_analyze_one(image, cfg, pair, share))
    return results


def _analyze_one(image: np.ndarray | torch.Tensor, cfg: AnalysisConfig, pair: ModelPair,
                 report: ProgressFn) -> AnalysisResult:
    timer = _Timer()
    t0 = time.perf_counter()
    clf = pair.classifier
    cfg.validate(num_patches=clf.num_patches)
    check_schedule(pair.denoiser, cfg.sigma, cfg.mode, cfg.multistep_steps)  # t* > 0, steps <= t*: before any work
    arr = _as_tensor_image(image)
    prepared = prepare_image(arr, smoothing_size(pair, cfg.mode), mode=cfg.image_mode).astype(np.float32)
    x = torch.from_numpy(prepared)[None].to(pair.device)
    digest = image_digest(prepared)
    t0 = timer.lap("prepare", t0)

    with torch.inference_mode():
        _check_models_finite(pair, x, cfg)
        report("attack", 0.0)
        if _overlaps(cfg):
            # The clean estimates do not need the attack: on a CPU the attack runs on its own
            # single-threaded worker while the clean samples are drawn (docs/PERFORMANCE.md).
            pending = _start_attack_stage(cfg, pair, x, digest, timer)
            t0 = time.perf_counter()
            clean_outs = _smooth_stage(cfg, pair, x, None, report)
            report("attack", 0.5)
            stage = pending()
            outs = _smooth_stage(cfg, pair, x, stage.x_adv, report, clean_outs)
        else:
            stage = _start_attack_stage(cfg, pair, x, digest, timer)()
            t0 = time.perf_counter()
            outs = _smoothing_stage(cfg, pair, x, stage.x_adv, report)
        _check_smoothed_finite(outs)
        t0 = timer.lap("smoothing", t0)
        perturbed = None
        if cfg.sensitivity_samples:
            report("sensitivity", 0.95)
            perturbed = _sensitivity_stage(cfg, pair, x)
            t0 = timer.lap("sensitivity", t0)

    result = _assemble(cfg, pair, prepared, digest, x, stage, outs, timer, t0, perturbed)
    report("done", 1.0)
    return result


@dataclass(frozen=True)
class _AttackStage:
    """What the attack and the vanilla ViT give for one image: independent of smoothing settings."""

    x_adv: torch.Tensor  # (1, 3, H, W) on the pair's device
    attention: np.ndarray  # (2, P) vanilla explanation of clean, attacked
    probs: np.ndarray  # (2, C)


_CACHE_SIZE = 64  # attack stages per model: a few MB
_cache: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict[tuple, _AttackStage]]" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every cached attack stage (benchmarks time cold analyses with it)."""
    with _cache_lock:
        _cache.clear()


def _weights_fingerprint(pair: ModelPair) -> tuple:
    modules = [pair.classifier] + ([pair.denoiser.unet] if pair.denoiser is not None else [])
    return tuple((t.data_ptr(), t._version) for m in modules for t in (*m.parameters(), *m.buffers()))


def _attack_key(cfg: AnalysisConfig, pair: ModelPair, digest: str) -> tuple:
    params = json.dumps(_plain(get_attack(cfg.attack).resolve(cfg.attack_arguments())), sort_keys=True, default=str)
    denoiser = id(pair.denoiser) if pair.denoiser is not None else None
    return (digest, cfg.attack, params, cfg.seed, cfg.method, cfg.head_fusion, denoiser, str(pair.device),
            _weights_fingerprint(pair))


def _start_attack_stage(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor, digest: str,
                        timer: _Timer) -> Callable[[], _AttackStage]:
    """Start (or find in the cache) the attack and vanilla passes; returns a function that waits
    for them. On a CPU they run on the single-threaded worker (smoothing.run_single_threaded says
    why), so the caller can smooth the clean image meanwhile; elsewhere they run now."""
    key = _attack_key(cfg, pair, digest)
    with _cache_lock:
        per_model = _cache.setdefault(pair.classifier, OrderedDict())
        stage = per_model.get(key)
        if stage is not None:
            per_model.move_to_end(key)
    if stage is not None:
        timer.parts.setdefault("attack", 0.0)
        return lambda: stage

    def compute() -> _AttackStage:
        t0 = time.perf_counter()
        x_adv = run_attack(cfg.attack, pair.classifier, x, params=cfg.attack_arguments(), denoiser=pair.denoiser,
                           seed=cfg.seed)
        t0 = timer.lap("attack", t0)
        with torch.inference_mode():
            att_v, probs_v = vanilla(pair, torch.cat([x, x_adv]), method=cfg.method, head_fusion=cfg.head_fusion)
        timer.lap("vanilla", t0)
        computed = _AttackStage(x_adv=x_adv, attention=att_v, probs=probs_v)
        with _cache_lock:
            models = _cache.setdefault(pair.classifier, OrderedDict())
            models[key] = computed
            while len(models) > _CACHE_SIZE:
                models.popitem(last=False)
        return computed

    if pair.device.type != "cpu":
        done = compute()
        return lambda: done
    future = submit_single_threaded(compute)
    return future.result


def _overlaps(cfg: AnalysisConfig) -> bool:
    """Whether the clean and the attacked image are smoothed in two calls (the clean one while the
    attack runs): always, except with early stopping (all estimates must stop at the same N) or
    shared noise (one call with the same draws for both). The choice depends on the settings
    only, never on the cache or the device, so the numbers do not either."""
    return not cfg.early_stop and not (cfg.shared_noise and cfg.mode != "denoise-only")


def _floor_batch(cfg: AnalysisConfig) -> bool:
    """Whether the noise floor needs a second clean estimate (the "independent" estimator)."""
    return cfg.noise_floor and cfg.noise_floor_estimator == "independent"


def _smooth_kwargs(cfg: AnalysisConfig, report: ProgressFn, start: float, span: float) -> dict:
    floor_batch = _floor_batch(cfg)
    return dict(sigma=cfg.sigma, mode=cfg.mode, method=cfg.method, head_fusion=cfg.head_fusion,
                batch_size=cfg.batch_size, keep_samples=cfg.bootstrap > 0 or (cfg.noise_floor and not floor_batch),
                multistep_steps=cfg.multistep_steps, precision=cfg.precision,
                progress=lambda done, total: report("smoothing", start + span * done / total))


def _smooth_stage(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor, x_adv: torch.Tensor | None,
                  report: ProgressFn, clean_outs: list[SmoothedOutput] | None = None) -> list[SmoothedOutput]:
    """The two-call path (_overlaps). Without ``x_adv``: [clean] or, with the independent noise
    floor, [clean, clean again], from the generator seeded with ``cfg.seed``. With it: the full
    [clean, attacked(, clean again)], the attacked estimate drawing from a generator seeded with
    ``cfg.seed + 1`` (independent of the clean draws, whatever their count)."""
    floor_batch = _floor_batch(cfg)
    if x_adv is None:
        batch = torch.cat([x, x] if floor_batch else [x]).cpu()
        return smooth(pair, batch, n_samples=cfg.n_samples, generator=torch.Generator().manual_seed(cfg.seed),
                      **_smooth_kwargs(cfg, report, 0.1, 0.5))
    attacked = smooth(pair, x_adv.cpu(), n_samples=cfg.n_samples,
                      generator=torch.Generator().manual_seed((cfg.seed + 1) % 2**63),
                      **_smooth_kwargs(cfg, report, 0.6, 0.35))
    return [clean_outs[0], attacked[0], *clean_outs[1:]]


def _smoothing_stage(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor, x_adv: torch.Tensor,
                     report: ProgressFn) -> list[SmoothedOutput]:
    """The one-call path (early stopping or shared noise, see _overlaps): [clean, attacked] or,
    with the independent noise floor, [clean, attacked, clean again].

    One smoothing call for all of them, so their samples share forward batches; early stopping
    then stops all of them at the same N.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    floor_batch = _floor_batch(cfg)
    batch = torch.cat([x, x_adv, x] if floor_batch else [x, x_adv]).cpu()
    noise = None
    if cfg.shared_noise and cfg.mode != "denoise-only":
        noise = torch.randn((cfg.n_samples, *x.shape[1:]), generator=generator) * cfg.sigma
    rule = EarlyStop(k=cfg.k, alpha=cfg.early_stop_alpha) if cfg.early_stop else None
    kwargs = dict(_smooth_kwargs(cfg, report, 0.15, 0.8), generator=generator)
    if noise is None:
        return smooth(pair, batch, n_samples=cfg.n_samples, early_stop=rule, **kwargs)
    # Common random numbers: the same draws for clean and attacked; the floor gets fresh ones,
    # as many as the (possibly early-stopped) pair got.
    outs = smooth(pair, batch[:2], n_samples=cfg.n_samples, noise=noise, early_stop=rule, **kwargs)
    if floor_batch:
        outs += smooth(pair, batch[2:], n_samples=outs[0].n_samples, **kwargs)
    return outs


def _sensitivity_stage(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Explanations at M perturbed copies of the clean image: (vanilla (M, P), FViT (M, P)).

    One batched vanilla pass and one smoothing call over the M images (each n_samples draws);
    the ball draws and the smoothing noise come from their own seeded generators.
    """
    draws = torch.Generator().manual_seed((cfg.seed + 2) % 2**63)
    images = ball_perturbations(x, cfg.sensitivity_samples, cfg.sensitivity_radius, cfg.sensitivity_norm, draws)
    att_v, _ = vanilla(pair, images, method=cfg.method, head_fusion=cfg.head_fusion)
    kwargs = dict(_smooth_kwargs(cfg, lambda stage, fraction: None, 0.0, 1.0), keep_samples=False)
    outs = smooth(pair, images.cpu(), n_samples=cfg.n_samples,
                  generator=torch.Generator().manual_seed((cfg.seed + 3) % 2**63), **kwargs)
    return att_v, np.stack([out.attention for out in outs])


def _noise_floor(cfg: AnalysisConfig, clean: SmoothedOutput, second: SmoothedOutput | None,
                 rng: np.random.Generator) -> tuple[float | None, tuple[float, float] | None]:
    """(noise floor V_k, its 95% interval) for the chosen estimator; (None, None) when off."""
    if not cfg.noise_floor or clean.samples_attention is None and second is None:
        return None, None
    if second is not None:
        floor = float(metrics.topk_overlap(clean.attention, second.attention, cfg.k))
        ci = None
        if cfg.bootstrap > 0 and clean.samples_attention is not None and clean.n_samples > 1:
            ci = bootstrap_overlap(clean.samples_attention, second.samples_attention, cfg.k, cfg.bootstrap, rng)
        return floor, ci
    if clean.n_samples < 2:
        return None, None
    return bootstrap_noise_floor(clean.samples_attention, cfg.k, cfg.bootstrap, rng)


def _assemble(cfg: AnalysisConfig, pair: ModelPair, prepared: np.ndarray, digest: str, x: torch.Tensor,
              stage: _AttackStage, outs: list[SmoothedOutput], timer: _Timer, t0: float,
              perturbed: tuple[np.ndarray, np.ndarray] | None = None) -> AnalysisResult:
    clf, names = pair.classifier, pair.classifier.class_names
    x_adv = stage.x_adv
    clean_s, adv_s = outs[0], outs[1]
    second = outs[2] if len(outs) > 2 else None
    att_v, probs_v = stage.attention.copy(), stage.probs.copy()  # results never alias the cache
    grid = clf.grid_size
    vanilla_cmp = _compare(_view(probs_v[0], att_v[0], names), _view(probs_v[1], att_v[1], names), cfg.k,
                           cfg.renyi_alpha, grid)
    fvit_cmp = _compare(_view(clean_s.probs, clean_s.attention, names), _view(adv_s.probs, adv_s.attention, names),
                        cfg.k, cfg.renyi_alpha, grid)
    # Its own generator, so the V_k floor and intervals keep their numbers.
    pairs = floor_pairs(cfg, clean_s, second, np.random.default_rng([cfg.seed, 13]))
    if perturbed is not None:
        vanilla_cmp.sensitivity = sensitivity(att_v[0], perturbed[0])
        floor_changes = None if pairs is None else relative_change(pairs[0], pairs[1])
        fvit_cmp.sensitivity = {**sensitivity(clean_s.attention, perturbed[1]),
                                "floor": None if floor_changes is None else float(floor_changes.mean())}
    rng = np.random.default_rng(cfg.seed)
    ci = None
    if cfg.bootstrap > 0 and clean_s.samples_attention is not None and clean_s.n_samples > 1:
        ci = bootstrap_overlap(clean_s.samples_attention, adv_s.samples_attention, cfg.k, cfg.bootstrap, rng)
    floor, floor_ci = _noise_floor(cfg, clean_s, second, rng)
    delta = (x_adv - x).flatten()
    l2 = float(delta.norm(p=2))
    # Cohen's CERTIFY wants a class guess independent of the estimation counts (SELECTION_SOURCES):
    # the second clean estimate's votes when there is one, else the vanilla clean prediction. Both
    # cost no extra samples.
    if second is not None:
        selection, source = second.votes, "second-estimate"
    else:
        selection, source = np.eye(len(probs_v[0]), dtype=np.int64)[int(np.argmax(probs_v[0]))], "vanilla-prediction"
    certs = _certificates(cfg, clean_s, selection, source, adv_s, l2, int(np.prod(prepared.shape)), clf.num_patches)
    faithful = FaithfulDetails(
        mode=cfg.mode, sigma=cfg.sigma, t_star=clean_s.t_star, n_samples=clean_s.n_samples,
        precision=resolve_precision(cfg.precision, pair.device, cfg.method),
        noise_floor_estimator=cfg.noise_floor_estimator if floor is not None else None,
        topk_overlap_floor=floor, topk_overlap_ci=ci, topk_overlap_floor_ci=floor_ci,
        votes_clean=clean_s.votes, votes_attacked=adv_s.votes,
        attention_se_clean=clean_s.attention_se, attention_se_attacked=adv_s.attention_se,
        certified=certs, denoised_sample=clean_s.denoised_sample,
        map_metrics_floor=map_metrics_floor(pairs, grid, cfg.k), stopped_early=bool(clean_s.stopped_early),
    )
    timer.lap("metrics", t0)
    x_np, adv_np = x[0].cpu().numpy().copy(), x_adv[0].cpu().numpy().copy()
    views = resize_pixels(torch.cat([x, x_adv]).float().cpu(), clf.img_size).numpy()
    attack_info = {"name": cfg.attack, "params": _plain(get_attack(cfg.attack).resolve(cfg.attack_arguments())),
                   "linf": float(delta.abs().max()), "l2": l2, "crafted_on": "fvit" if cfg.attack == "eot_dds" else "vanilla"}
    result = AnalysisResult(
        config=cfg, class_names=tuple(names), grid_size=clf.grid_size, image_digest=digest,
        clean_image=x_np, attacked_image=adv_np, attack=attack_info, vanilla=vanilla_cmp, fvit=fvit_cmp,
        faithful=faithful, timing=timer.finish(), clean_view=views[0].copy(), attacked_view=views[1].copy(),
    )
    _check_finite(result)
    return result


def _plain(values: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}


_NON_FINITE_HINT = "its weights are probably corrupted (NaN or infinite); re-export or re-download the checkpoint"


def _check_models_finite(pair: ModelPair, x: torch.Tensor, cfg: AnalysisConfig) -> None:
    """One cheap forward pass of each model on the clean image before any work: a model that
    returns NaN or infinity is named in the error instead of surfacing as a NaN metric later."""
    if not bool(torch.isfinite(pair.classifier(x)).all()):
        raise InputError(f"the classifier returned NaN or infinite logits for this image: {_NON_FINITE_HINT}")
    if cfg.mode != "rs" and pair.denoiser is not None:
        from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma

        t_star = timestep_for_sigma(pair.denoiser.alphas_cumprod, cfg.sigma)
        if not bool(torch.isfinite(one_shot_denoise(pair.denoiser, x, t_star)).all()):
            raise InputError(f"the denoiser returned NaN or infinite pixels for this image: {_NON_FINITE_HINT}")


def _check_smoothed_finite(outs: list[SmoothedOutput]) -> None:
    for out in outs:
        if not (np.isfinite(out.probs).all() and np.isfinite(out.attention).all()):
            raise InputError("the smoothed model produced NaN or infinite values on noisy inputs; the classifier or "
                             "denoiser is numerically unstable there (check its weights, or try a smaller sigma)")


def _check_finite(result: AnalysisResult) -> None:
    """Refuse to return NaN or infinity: a model that produced them must be reported, not plotted."""
    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{where}.{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                walk(value, f"{where}[{i}]")
        elif isinstance(obj, float) and not math.isfinite(obj):
            raise InputError(f"the models produced a non-finite value at {where}; check the model weights and input")

    walk(result.to_json(), "result")
