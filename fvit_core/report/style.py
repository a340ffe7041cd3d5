"""Publication style of every figure: colours, labels, text helpers and small numeric helpers.

Conventions, the same in every figure (static.py and interactive.py):
- one colour per model (Okabe-Ito, colour-blind safe): vanilla ViT vermillion, FViT blue; the
  clean image's bars are a light tint of that colour, the attacked image's the full colour;
- maps use ONE scale for all maps of a figure, so columns can be compared by colour
  (:func:`map_scale`): attention (raw, rollout) on a sequential colour map (inferno) from 0 to the
  largest weight; relevance (the gradient and LRP methods, heavy-tailed) from 0 to the 98th
  percentile of the weights, the top 2% saturated as in Captum's visualisations; signed
  relevance (full LRP) on a diverging map (blue negative, red positive) symmetric around 0;
- top-k focal patches are outlined in cyan; on an attacked image the clean top-k patches that
  were lost are outlined dashed in white;
- sizes fit a single paper column (3.4 in) at 7 pt text; saved at 300 dpi.

Matplotlib figures are built under :func:`publication_style`'s lock, because rcParams are
process-global and the dashboard renders from several threads.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import matplotlib as mpl
import numpy as np

from fvit_core.attacks.specs import get_attack
from fvit_core.explanations.settings import SIGNED_METHODS
from fvit_core.metrics import topk_indices

if TYPE_CHECKING:  # plotly is imported lazily: the CLI's figures need only matplotlib
    from fvit_core.analysis.result import AnalysisResult, ImageView, ModelComparison


# --------------------------------------------------------------------------------------------
# Style
# --------------------------------------------------------------------------------------------

COLORS: dict[str, str] = {
    "vanilla": "#D55E00",  # vermillion
    "fvit": "#0072B2",  # blue
    "floor": "#555555",
    "chance": "#AAAAAA",
    "bound": "#009E73",  # bluish green: guarantees
    "radius_class": "#CC79A7",  # reddish purple
    "radius_topk": "#009E73",
    "perturbation": "#D55E00",
    "current": "#444444",
}
CLEAN_ALPHA = 0.4  # tint of the model colour for the clean image's bars
ATTENTION_CMAP = "inferno"
SIGNED_CMAP = "RdBu_r"  # diverging: negative blue, 0 white, positive red
# Relevance maps saturate their top (100 - RELEVANCE_PERCENTILE)% (Captum's outlier_perc = 2).
RELEVANCE_PERCENTILE = 98.0
# The methods whose maps are attention weights; the others are relevance (docs/EXPLANATIONS.md).
ATTENTION_METHODS: tuple[str, ...] = ("raw", "rollout")
OVERLAY_ALPHA = 0.6  # heatmap over the image: enough image left to see what is attended
TOPK_EDGE = "#00FFFF"
LOST_EDGE = "#FFFFFF"
SINGLE_COLUMN_IN = 3.4
SAVE_DPI = 300
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")

MODEL_KEYS: tuple[str, str] = ("vanilla", "fvit")
MODE_NAMES: dict[str, str] = {"dds": "DDS", "rs": "RS", "denoise-only": "denoise-only", "multistep": "DDS multi-step"}

PUBLICATION_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "savefig.dpi": SAVE_DPI,
    "svg.fonttype": "none",  # text stays text in SVG (editable, searchable)
    "svg.hashsalt": "fvit",  # deterministic element ids: same figure, same bytes
    "pdf.fonttype": 42,  # TrueType in PDF, as journals ask
}

_MPL_LOCK = threading.RLock()


@contextlib.contextmanager
def publication_style() -> Iterator[None]:
    """Apply :data:`PUBLICATION_STYLE` while building or saving a figure (thread safe)."""
    with _MPL_LOCK, mpl.rc_context(PUBLICATION_STYLE):
        yield


def model_label(result: AnalysisResult, which: str) -> str:
    """Display name of a column: 'Vanilla ViT' or 'Faithful ViT (DDS)' (mode in brackets)."""
    if which == "vanilla":
        return "Vanilla ViT"
    if which == "fvit":
        return f"Faithful ViT ({MODE_NAMES.get(result.faithful.mode, result.faithful.mode)})"
    raise ValueError(f"which must be 'vanilla' or 'fvit', got {which!r}")


METHOD_NAMES: dict[str, str] = {"raw": "raw attention", "rollout": "attention rollout",
                                "grad_rollout": "gradient-weighted rollout", "gradcam": "attention GradCAM",
                                "transformer_attribution": "Transformer Attribution", "lrp": "full LRP",
                                "partial_lrp": "partial LRP", "attr_rollout": "Attribution Rollout"}


def method_name(method: str) -> str:
    """An explanation method as people read it ('attention rollout'); unknown keys as given."""
    return METHOD_NAMES.get(method, method.replace("_", " "))


_SUBSCRIPT = str.maketrans("0123456789.", "₀₁₂₃₄₅₆₇₈₉.")


def sub(number) -> str:
    """A number as Unicode subscript digits (V₈, D₂): one spelling in charts and in the page's cards."""
    return f"{number:g}".translate(_SUBSCRIPT)


def settings_text(result: AnalysisResult) -> str:
    """The settings every figure states: 'attention rollout (heads: mean) · DDS σ = 0.25, N = 64 · top-8'.

    N is the number of samples actually drawn per estimate (fewer than asked after early stopping).
    """
    cfg, d = result.config, result.faithful
    stopped = f" of {cfg.sampling.n_samples}" if d.n_samples != cfg.sampling.n_samples and cfg.smoothing.noisy else ""
    target = target_text(result)
    return (f"{method_name(cfg.explanation.method)} (heads: {cfg.explanation.head_fusion}"
            f"{'; ' + target if target else ''}) · {MODE_NAMES.get(d.mode, d.mode)} "
            f"σ = {d.sigma:g}, N = {d.n_samples}{stopped} · top-{cfg.explanation.k}")


def target_text(result: AnalysisResult) -> str:
    """The class the maps explain, in words ('' where the method does not depend on a class and
    none was chosen: attention is the same whatever the class)."""
    e = result.explanation
    if e["target"] is not None:
        return f"explains {e['target_name']}" + ("" if e["depends_on_target"] else " (this method ignores the class)")
    return "explains the predicted class" if e["depends_on_target"] else ""


def comparison(result: AnalysisResult, which: str) -> ModelComparison:
    """``result.vanilla`` or ``result.fvit`` by name."""
    if which not in MODEL_KEYS:
        raise ValueError(f"which must be 'vanilla' or 'fvit', got {which!r}")
    return result.vanilla if which == "vanilla" else result.fvit


def format_param(value: Any, unit: str) -> str:
    """An attack parameter as shown to people: 0.0313.. with unit '/255' -> '8/255'."""
    if unit == "/255" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value * 255:.3g}/255"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def attack_summary(result: AnalysisResult) -> str:
    """One line: 'PGD (Linf): eps 8/255, alpha 1.6/255, steps 10, random_start True'."""
    spec = get_attack(result.attack["name"])
    units = {p.name: p.unit for p in spec.params}
    params = ", ".join(f"{name} {format_param(value, units.get(name, ''))}"
                       for name, value in result.attack["params"].items())
    return f"{spec.label}: {params}" if params else spec.label


def perturbation_summary(result: AnalysisResult) -> str:
    """'||delta||_inf = 8.0/255, ||delta||_2 = 1.07' of the attack actually applied."""
    return f"‖δ‖∞ = {result.attack['linf'] * 255:.1f}/255, ‖δ‖₂ = {result.attack['l2']:.3f}"


# --------------------------------------------------------------------------------------------
# Small numeric helpers (shared by both back-ends)
# --------------------------------------------------------------------------------------------


def to_hwc(image: np.ndarray) -> np.ndarray:
    """(3, H, W) floats in [0, 1] -> (H, W, 3) for imshow."""
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0).transpose(1, 2, 0)


def attention_grid(attention: np.ndarray, grid_size: tuple[int, int]) -> np.ndarray:
    """Patch weights (P,) -> (rows, cols) in the image's patch layout (row-major, as timm)."""
    rows, cols = grid_size
    weights = np.asarray(attention, dtype=np.float64)
    if weights.shape != (rows * cols,):
        raise ValueError(f"attention has shape {weights.shape}, expected ({rows * cols},) for a {rows}x{cols} grid")
    return weights.reshape(rows, cols)


@dataclass(frozen=True)
class MapScale:
    """How the maps of one analysis are coloured: the values shown (``signed``: the signed
    relevances, else the non-negative weights), their range, the colour map and its label."""

    signed: bool
    vmin: float
    vmax: float
    cmap: str
    label: str

    def values(self, view: "ImageView") -> np.ndarray:
        """The (P,) values a view's map shows."""
        return view.relevance if self.signed and view.relevance is not None else view.attention


def map_scale(result: AnalysisResult) -> MapScale:
    """The colour scale of the four maps of ``result`` (both models, both images): module
    docstring. Each method family has its own scale and its own colour-bar label."""
    method = result.config.explanation.method
    views = [getattr(comparison(result, w), img) for w in MODEL_KEYS for img in ("clean", "attacked")]
    if method in SIGNED_METHODS and all(v.relevance is not None for v in views):
        values = np.abs(np.concatenate([v.relevance for v in views]))
        top = _clipped_top(values)
        return MapScale(True, -top, top, SIGNED_CMAP,
                        f"signed relevance (share of |relevance|; top {100 - RELEVANCE_PERCENTILE:g}% saturated)")
    values = np.concatenate([v.attention for v in views])
    if method in ATTENTION_METHODS:
        top = float(values.max())
        return MapScale(False, 0.0, top if top > 0 else 1.0, ATTENTION_CMAP, "attention weight (share of the patches)")
    return MapScale(False, 0.0, _clipped_top(values), ATTENTION_CMAP,
                    f"relevance (share of the patches; top {100 - RELEVANCE_PERCENTILE:g}% saturated)")


def _clipped_top(values: np.ndarray) -> float:
    """The RELEVANCE_PERCENTILE of the values, or their maximum where that is 0 (sparse maps)."""
    top = float(np.percentile(values, RELEVANCE_PERCENTILE))
    if top <= 0:
        top = float(values.max())
    return top if top > 0 else 1.0


def perturbation_view(result: AnalysisResult) -> tuple[np.ndarray, float]:
    """The perturbation mapped to [0, 1] for display (0.5 = no change) and its amplification."""
    delta = result.perturbation
    size = float(np.abs(delta).max())
    gain = 0.5 / size if size > 0 else 1.0
    return np.clip(0.5 + gain * delta, 0.0, 1.0), gain


def top_classes(probs: Sequence[np.ndarray], top: int) -> np.ndarray:
    """Class indices to show: all if there are at most ``top``, else the union of each vector's
    largest ``top`` entries, ordered by their largest probability (descending)."""
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    n = stacked.shape[1]
    if n <= top:
        return np.arange(n)
    chosen = np.unique(np.concatenate([np.argsort(-row, kind="stable")[:top] for row in stacked]))
    return chosen[np.argsort(-stacked[:, chosen].max(axis=0), kind="stable")]


def floor_offset(num_patches: int) -> float:
    """How far right of k the noise-floor marker sits, so its interval does not cover the FViT's
    V_k interval at k (about 2% of the axis)."""
    return max(0.4, 0.02 * num_patches)


def chance_overlap(num_patches: int) -> np.ndarray:
    """Expected V_k of two independent uniformly random top-k sets: k / P for k = 1..P."""
    return np.arange(1, num_patches + 1) / num_patches


def lost_patches(clean: np.ndarray, attacked: np.ndarray, k: int) -> np.ndarray:
    return np.setdiff1d(topk_indices(clean, k), topk_indices(attacked, k))


def view_caption(view: ImageView) -> str:
    return f"{view.label_name} ({view.confidence:.2f})"


def overlap_text(result: AnalysisResult, which: str) -> str:
    k = result.config.explanation.k
    text = f"V$_{{{k}}}$ = {comparison(result, which).topk_overlap:.2f}"
    floor = result.faithful.topk_overlap_floor
    if which == "fvit" and floor is not None:
        text += f" (noise floor {floor:.2f})"
    return text


def check_layer_maps(maps: np.ndarray, grid_size: tuple[int, int]) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4 or maps.shape[0] != 2 or maps.shape[-1] != grid_size[0] * grid_size[1]:
        raise ValueError(f"maps must be (2, layers, heads, {grid_size[0] * grid_size[1]}) for clean and attacked, "
                         f"got {maps.shape}")
    return maps


def sweep_columns(rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Sweep rows -> float columns sorted by sigma (None -> NaN)."""
    ordered = sorted(rows, key=lambda r: float(r["sigma"]))
    keys = ("sigma", "vanilla_overlap", "fvit_overlap", "fvit_overlap_ci_low", "fvit_overlap_ci_high", "noise_floor",
            "fvit_clean_confidence", "fvit_attacked_confidence", "class_radius", "topk_radius_l2", "perturbation_l2")
    return {key: np.array([math.nan if r.get(key) is None else float(r[key]) for r in ordered], dtype=np.float64)
            for key in keys}
