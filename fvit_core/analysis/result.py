"""What one analysis returns: plain dataclasses of numpy arrays and numbers (no tensors, no
modules), with the documented JSON (README, "fvit analyze")."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from fvit_core.analysis.config import AnalysisConfig


@dataclass
class ImageView:
    """One model on one image: prediction and explanation."""

    label: int
    label_name: str
    confidence: float
    probs: np.ndarray
    attention: np.ndarray
    # (P,) signed relevances of a signed method (explanations.settings.SIGNED_METHODS), else None
    relevance: np.ndarray | None = None

    def to_json(self) -> dict:
        return {"label": self.label, "label_name": self.label_name, "confidence": self.confidence,
                "probs": self.probs.tolist(), "attention": self.attention.tolist(),
                "relevance": None if self.relevance is None else self.relevance.tolist()}


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
    p_a_lower: float  # lower confidence bound on the guessed class's share of the votes
    perturbation_l2: float
    prediction_bound: float
    measured_renyi: float
    independent_selection: bool
    selection: str  # where CERTIFY's class guess came from: SELECTION_SOURCES
    guess_class: int = -1  # the class CERTIFY tried to certify (c_A)
    # Why CERTIFY abstained (None: it certified): "guess-not-top" (the guess is not the smoothed
    # classifier's top class) or "no-majority" (it is, but p_A_lower < 1/2)
    abstain_reason: str | None = None
    # The draws Cohen's bounds counted: how many, and which ("every draw", or "first of each
    # antithetic pair": the pairs' two draws are dependent, so only one of each counts).
    vote_draws: int = 0
    vote_scheme: str = "every draw"

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
    # (P,) the noise floor of V_k for k = 1..P (its value at the analysis's k is topk_overlap_floor)
    overlap_curve_floor: np.ndarray | None = None

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
            "overlap_curve_floor": None if self.overlap_curve_floor is None else self.overlap_curve_floor.tolist(),
        }


@dataclass
class AnalysisResult:
    """Everything one analysis produced. Images are (3, H, W) float32 in [0, 1].

    ``clean_image`` and ``attacked_image`` are in the analysis' pixel space (``pixel_size``: the
    denoiser's size with a denoiser, ModelPair.smoothing_size), where noise, perturbation norms
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
    original_size: tuple[int, int] = (0, 0)  # (H, W) of the image as given, before it was prepared
    fit_notice: str | None = None  # data.images.fit_notice: how much fitting it to the model changed it

    @property
    def explanation(self) -> dict:
        """What the maps explain: method, head fusion, and the class (``target``; None: each
        image's and each draw's own predicted class)."""
        e = self.config.explanation
        return {"method": e.method, "head_fusion": e.head_fusion, "target": e.target,
                "target_name": None if e.target is None else self.class_names[e.target],
                "depends_on_target": e.depends_on_target}

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
            "image": {"original_size": list(self.original_size), "image_mode": self.config.image_mode,
                      "fit_notice": self.fit_notice},
            "explanation": self.explanation,
            "image_digest": self.image_digest,
            "attack": self.attack,
            "vanilla": self.vanilla.to_json(),
            "fvit": fvit,
            "timing": self.timing,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)
