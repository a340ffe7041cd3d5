"""Figures of one analysis: matplotlib (publication) and plotly (interactive), and export helpers.

Pure functions over :class:`~fvit_core.analysis.result.AnalysisResult` (plus the plain rows of
:mod:`fvit_core.analysis.sweep` and the numpy maps of :mod:`fvit_core.explanations.explorer`): no Streamlit, no
pyplot state. The dashboard and ``fvit analyze --out`` call the same builders, so a figure on
screen and the file on disk come from the same code.

Conventions, the same in every figure:
- one colour per model (Okabe-Ito, colour-blind safe): vanilla ViT vermillion, FViT blue; the
  clean image's bars are a light tint of that colour, the attacked image's the full colour;
- attention heatmaps use one sequential colour map (inferno) and ONE scale for all maps of a
  figure (0 .. the largest weight among them), so columns can be compared by colour;
- top-k focal patches are outlined in cyan; on an attacked image the clean top-k patches that
  were lost are outlined dashed in white;
- sizes fit a single paper column (3.4 in) at 7 pt text; saved at 300 dpi.

Matplotlib figures are built with ``matplotlib.figure.Figure`` (never pyplot), under a lock,
because rcParams are process-global and the dashboard renders from several threads.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fvit_core.analysis.metrics import topk_indices

if TYPE_CHECKING:  # plotly is imported lazily: the CLI's figures need only matplotlib
    import plotly.graph_objects as go

    from fvit_core.analysis.config import AnalysisConfig

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
OVERLAY_ALPHA = 0.6  # heatmap over the image: enough image left to see what is attended
TOPK_EDGE = "#00FFFF"
LOST_EDGE = "#FFFFFF"
SINGLE_COLUMN_IN = 3.4
DOUBLE_COLUMN_IN = 7.0
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
                                "grad_rollout": "gradient-weighted rollout", "gradcam": "attention GradCAM"}


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
    stopped = f" of {cfg.n_samples}" if d.n_samples != cfg.n_samples and cfg.mode != "denoise-only" else ""
    return (f"{method_name(cfg.method)} (heads: {cfg.head_fusion}) · {MODE_NAMES.get(d.mode, d.mode)} "
            f"σ = {d.sigma:g}, N = {d.n_samples}{stopped} · top-{cfg.k}")


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
    from fvit_core.attacks.registry import get_attack  # lazy: the attack registry imports torch

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


def attention_scale(result: AnalysisResult) -> float:
    """The shared colour scale maximum: the largest weight of the four maps (both models, both images)."""
    maps = [getattr(comparison(result, w), img).attention for w in MODEL_KEYS for img in ("clean", "attacked")]
    top = max(float(np.max(m)) for m in maps)
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


def _floor_offset(num_patches: int) -> float:
    """How far right of k the noise-floor marker sits, so its interval does not cover the FViT's
    V_k interval at k (about 2% of the axis)."""
    return max(0.4, 0.02 * num_patches)


def chance_overlap(num_patches: int) -> np.ndarray:
    """Expected V_k of two independent uniformly random top-k sets: k / P for k = 1..P."""
    return np.arange(1, num_patches + 1) / num_patches


def _lost_patches(clean: np.ndarray, attacked: np.ndarray, k: int) -> np.ndarray:
    return np.setdiff1d(topk_indices(clean, k), topk_indices(attacked, k))


def _view_caption(view: ImageView) -> str:
    return f"{view.label_name} ({view.confidence:.2f})"


def _overlap_text(result: AnalysisResult, which: str) -> str:
    k = result.config.k
    text = f"V$_{{{k}}}$ = {comparison(result, which).topk_overlap:.2f}"
    floor = result.faithful.topk_overlap_floor
    if which == "fvit" and floor is not None:
        text += f" (noise floor {floor:.2f})"
    return text


# --------------------------------------------------------------------------------------------
# Matplotlib figures
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _image_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _outline(ax, indices: np.ndarray, grid: tuple[int, int], shape: tuple[int, int], *, color: str,
             style: str = "-", width: float = 0.9) -> None:
    rows, cols = grid
    height, width_px = shape
    ph, pw = height / rows, width_px / cols
    for index in np.asarray(indices, dtype=int):
        r, c = divmod(int(index), cols)
        ax.add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, edgecolor=color,
                               linestyle=style, linewidth=width))


def draw_attention(ax, image: np.ndarray, attention: np.ndarray, grid: tuple[int, int], k: int, vmax: float,
                   *, lost: np.ndarray | None = None):
    """Image, attention heatmap on top (shared scale 0..vmax), top-k patches outlined.

    ``lost``: patch indices to outline dashed (the clean top-k that the attacked map lost).
    Returns the heatmap's mappable for a colour bar.
    """
    height, width = image.shape[1:]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    ax.imshow(to_hwc(image), interpolation="nearest", extent=extent)
    mappable = ax.imshow(attention_grid(attention, grid), cmap=ATTENTION_CMAP, vmin=0.0, vmax=vmax,
                         alpha=OVERLAY_ALPHA, interpolation="nearest", extent=extent)
    _outline(ax, topk_indices(attention, k), grid, (height, width), color=TOPK_EDGE)
    if lost is not None and len(lost):
        _outline(ax, lost, grid, (height, width), color=LOST_EDGE, style=(0, (2, 1.5)), width=0.8)
    _image_axes(ax)
    return mappable


def _attention_colorbar(fig: Figure, mappable, axes, orientation: str = "vertical") -> None:
    bar = fig.colorbar(mappable, ax=axes, orientation=orientation, fraction=0.05, pad=0.02, shrink=0.9)
    bar.set_label("attention weight (fraction of patch attention)")
    bar.solids.set_alpha(1.0)
    bar.outline.set_linewidth(0.4)


def compare_figure(result: AnalysisResult) -> Figure:
    """The key figure: clean (top) and attacked (bottom) attention of the vanilla ViT (left) and the
    FViT (right), one colour scale, top-k patches outlined, V_k (and the noise floor) per column."""
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 3.55)
        axes = fig.subplots(2, 2)
        vmax, grid, k = attention_scale(result), result.grid_size, result.config.k
        mappable = None
        for col, which in enumerate(MODEL_KEYS):
            cmp_ = comparison(result, which)
            for row, (name, image) in enumerate((("clean", result.clean_view), ("attacked", result.attacked_view))):
                view = getattr(cmp_, name)
                lost = _lost_patches(cmp_.clean.attention, cmp_.attacked.attention, k) if name == "attacked" else None
                ax = axes[row, col]
                mappable = draw_attention(ax, image, view.attention, grid, k, vmax, lost=lost)
                ax.set_xlabel(_view_caption(view), labelpad=2)
                if col == 0:
                    ax.set_ylabel(name, labelpad=2)
            axes[0, col].set_title(f"{model_label(result, which)}\n{_overlap_text(result, which)}")
        _attention_colorbar(fig, mappable, axes[:, 1], "vertical")
        fig.suptitle(f"{attack_summary(result).split(':')[0]}, {perturbation_summary(result)}; top-{k} outlined\n"
                     f"{settings_text(result)}", fontsize=6)
        return fig


def attention_figure(result: AnalysisResult, which: str, *, vmax: float | None = None) -> Figure:
    """One model's clean and attacked attention side by side (the dashboard's column figure).

    ``vmax`` defaults to :func:`attention_scale`, the scale shared with the other model.
    """
    cmp_ = comparison(result, which)
    k, grid = result.config.k, result.grid_size
    vmax = attention_scale(result) if vmax is None else vmax
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 2.1)
        axes = fig.subplots(1, 2)
        lost = _lost_patches(cmp_.clean.attention, cmp_.attacked.attention, k)
        mappable = None
        for ax, name, image in ((axes[0], "clean", result.clean_view), (axes[1], "attacked", result.attacked_view)):
            view = getattr(cmp_, name)
            mappable = draw_attention(ax, image, view.attention, grid, k, vmax, lost=lost if name == "attacked" else None)
            ax.set_title(f"{name}: {_view_caption(view)}")
        _attention_colorbar(fig, mappable, axes, "horizontal")
        fig.suptitle(f"{model_label(result, which)}: {settings_text(result)}", fontsize=6)
        return fig


def inputs_figure(result: AnalysisResult) -> Figure:
    """Clean image, attacked image, amplified perturbation, one denoised DDS sample."""
    shown, gain = perturbation_view(result)
    d = result.faithful
    denoised_title = {"dds": f"denoised (σ={d.sigma:g})", "rs": f"noisy input (σ={d.sigma:g})",
                      "denoise-only": "denoised (no noise)", "multistep": f"denoised, multi-step (σ={d.sigma:g})"}
    panels = (("clean", result.clean_image), ("attacked", result.attacked_image),
              (f"perturbation ×{gain:.0f}", shown), (denoised_title.get(d.mode, "model input"), d.denoised_sample))
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 1.2)
        for ax, (title, image) in zip(fig.subplots(1, 4), panels):
            ax.imshow(to_hwc(image), interpolation="nearest")
            ax.set_title(title, fontsize=6)
            _image_axes(ax)
        fig.suptitle(settings_text(result), fontsize=6)
        return fig


def _bars(ax, names: list[str], clean: np.ndarray, attacked: np.ndarray, color: str) -> None:
    y = np.arange(len(names))
    ax.barh(y - 0.2, clean, height=0.4, color=color, alpha=CLEAN_ALPHA, label="clean")
    ax.barh(y + 0.2, attacked, height=0.4, color=color, label="attacked")
    ax.set_yticks(y, names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first class on top (explicit: inverting shared axes twice undoes it)


def distributions_figure(result: AnalysisResult, top: int = 10) -> Figure:
    """Clean vs attacked prediction distributions of both models (top classes, class names)."""
    probs = [getattr(comparison(result, w), n).probs for w in MODEL_KEYS for n in ("clean", "attacked")]
    classes = top_classes(probs, top)
    names = [result.class_names[i] for i in classes]
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 0.5 + 0.17 * len(classes))
        axes = fig.subplots(1, 2, sharey=True, sharex=True)
        for ax, which in zip(axes, MODEL_KEYS):
            cmp_ = comparison(result, which)
            _bars(ax, names, cmp_.clean.probs[classes], cmp_.attacked.probs[classes], COLORS[which])
            ax.set_title(model_label(result, which))
            ax.set_xlabel("probability")
            ax.set_xlim(0, 1)
            ax.legend(loc="lower right")
        fig.suptitle(settings_text(result), fontsize=6)
        return fig


def votes_figure(result: AnalysisResult, top: int = 10) -> Figure:
    """DDS hard votes (argmax per noise sample) on the clean and the attacked image."""
    d = result.faithful
    classes = top_classes([d.votes_clean, d.votes_attacked], top)
    names = [result.class_names[i] for i in classes]
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 0.55 + 0.15 * len(classes))
        ax = fig.subplots()
        _bars(ax, names, d.votes_clean[classes], d.votes_attacked[classes], COLORS["fvit"])
        ax.set_xlabel(f"votes (of {d.n_samples} noise samples)")
        ax.set_xlim(0, d.n_samples)
        ax.set_title(f"{model_label(result, 'fvit')}: votes per class\n{settings_text(result)}")
        ax.legend(loc="lower right")
        return fig


def divergence_rows(result: AnalysisResult) -> list[tuple[str, float, str]]:
    """(label, value in nats, colour) of the measured Renyi divergences and the FViT's bound."""
    alpha = result.config.renyi_alpha
    c = result.faithful.certified
    return [
        (f"vanilla ViT: measured D$_{{{alpha:g}}}$", result.vanilla.divergences["renyi"], COLORS["vanilla"]),
        (f"FViT: measured D$_{{{alpha:g}}}$", c.measured_renyi, COLORS["fvit"]),
        ("FViT: bound αR²/(2σ²)", c.prediction_bound, COLORS["bound"]),
    ]


def divergence_figure(result: AnalysisResult) -> Figure:
    """Measured divergence between clean and attacked predictions vs the FViT's guaranteed bound."""
    rows = divergence_rows(result)
    values = np.array([max(v, 1e-6) for _, v, _ in rows])
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 1.35)
        ax = fig.subplots()
        c = result.faithful.certified
        ax.set_title(f"Prediction stability at R = ‖δ‖₂ = {c.perturbation_l2:.2f}\n{settings_text(result)}", fontsize=6)
        y = np.arange(len(rows))
        ax.barh(y, values, color=[c for _, _, c in rows], height=0.6)
        ax.set_yticks(y, [label for label, _, _ in rows])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("Rényi divergence clean vs attacked (nats, log)")
        for yi, v in zip(y, values):
            ax.annotate(f"{v:.3g}", (v, yi), xytext=(2, 0), textcoords="offset points", va="center", fontsize=6)
        ax.set_xlim(values.min() / 3, values.max() * 8)
        return fig


def overlap_curve_figure(result: AnalysisResult) -> Figure:
    """V_k between clean and attacked attention for every k, vanilla vs FViT, chance k/P, the
    current k with the FViT's bootstrap interval and its Monte Carlo noise floor."""
    p = len(result.vanilla.overlap_curve)
    ks = np.arange(1, p + 1)
    k, d = result.config.k, result.faithful
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 2.2)
        ax = fig.subplots()
        ax.plot(ks, chance_overlap(p), color=COLORS["chance"], linestyle="--", linewidth=0.8, label="chance (k/P)")
        for which in MODEL_KEYS:
            ax.plot(ks, comparison(result, which).overlap_curve, color=COLORS[which], label=model_label(result, which))
        if d.topk_overlap_ci is not None:
            lo, hi = d.topk_overlap_ci
            v = result.fvit.topk_overlap
            ax.errorbar([k], [v], yerr=[[v - lo], [hi - v]], color=COLORS["fvit"], capsize=2, linewidth=0.8,
                        marker="o", label=f"FViT V$_{{{k}}}$, 95% bootstrap CI")
        if d.topk_overlap_floor is not None:
            floor = d.topk_overlap_floor
            yerr = None
            if d.topk_overlap_floor_ci is not None:
                yerr = [[floor - d.topk_overlap_floor_ci[0]], [d.topk_overlap_floor_ci[1] - floor]]
            ax.errorbar([k + _floor_offset(p)], [floor], yerr=yerr, color=COLORS["floor"], capsize=2, linewidth=0.8,
                        marker="s", markerfacecolor="white", label="noise floor (clean vs clean)")
        ax.axvline(k, color=COLORS["current"], linestyle=":", linewidth=0.8)
        ax.set_xlabel("k (number of top patches)")
        ax.set_ylabel("top-k overlap V$_k$ (clean vs attacked)")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0.5, p + 0.5)
        ax.legend(loc="lower right")
        ax.set_title(settings_text(result), fontsize=6)
        return fig


def sweep_settings_text(rows: Sequence[dict]) -> str:
    """What a sweep held fixed: 'attention rollout (heads: mean) · N = 64 · top-8' (sigma varies)."""
    if not rows:
        return ""
    first = rows[0]
    method = f"{method_name(first['method'])} (heads: {first.get('head_fusion', '?')}) · " if "method" in first else ""
    return f"{method}N = {first['n_samples']} · top-{first['k']}"


def sigma_sweep_figure(rows: Sequence[dict], current_sigma: float | None = None) -> Figure:
    """Top-k overlap, FViT confidence and certified radii as functions of sigma (sweep rows)."""
    data = _sweep_columns(rows)
    s = data["sigma"]
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 4.4)
        ax_v, ax_c, ax_r = fig.subplots(3, 1, sharex=True)
        k = int(rows[0]["k"]) if rows else 0
        ax_v.set_title(f"Sweep over σ: {sweep_settings_text(rows)}", fontsize=6)
        ax_v.plot(s, data["vanilla_overlap"], color=COLORS["vanilla"], marker="o", label="vanilla ViT")
        ax_v.plot(s, data["fvit_overlap"], color=COLORS["fvit"], marker="o", label="FViT")
        if np.isfinite(data["fvit_overlap_ci_low"]).any():
            ax_v.fill_between(s, data["fvit_overlap_ci_low"], data["fvit_overlap_ci_high"], color=COLORS["fvit"],
                              alpha=0.15, linewidth=0, label="FViT 95% CI")
        ax_v.plot(s, data["noise_floor"], color=COLORS["floor"], marker="s", markerfacecolor="white",
                  linestyle="--", label="noise floor")
        ax_v.set_ylabel(f"top-{k} overlap V$_{{{k}}}$")
        ax_v.set_ylim(0, 1.02)
        ax_v.legend(loc="lower right", ncol=2)
        ax_c.plot(s, data["fvit_clean_confidence"], color=COLORS["fvit"], alpha=0.5, marker="o", label="FViT, clean")
        ax_c.plot(s, data["fvit_attacked_confidence"], color=COLORS["fvit"], marker="o", label="FViT, attacked")
        kept = np.array([bool(r["fvit_label_kept"]) for r in sorted(rows, key=lambda r: float(r["sigma"]))], dtype=bool)
        if (~kept).any():
            ax_c.plot(s[~kept], data["fvit_attacked_confidence"][~kept], linestyle="none", marker="x", color="black",
                      markersize=5, label="label flipped")
        ax_c.set_ylabel("confidence of\npredicted class")
        ax_c.set_ylim(0, 1.02)
        ax_c.legend(loc="lower right", ncol=2)
        ax_r.plot(s, data["class_radius"], color=COLORS["radius_class"], marker="o", label="class radius (L2)")
        ax_r.plot(s, data["topk_radius_l2"], color=COLORS["radius_topk"], marker="o", label="top-k radius (L2)")
        _perturbation_reference(ax_r, data)
        ax_r.set_ylabel("certified radius\n(L2, pixel units)")
        ax_r.set_xlabel("σ (noise std, pixel units, log scale)")
        ax_r.set_ylim(bottom=0)
        ax_r.legend(loc="upper left")
        _sigma_ticks(ax_r, s)
        if current_sigma is not None:
            for ax in (ax_v, ax_c, ax_r):
                ax.axvline(current_sigma, color=COLORS["current"], linestyle=":", linewidth=0.8)
            ax_v.annotate(f"current σ = {current_sigma:g}", (current_sigma, 1.0), xytext=(2, -6),
                          textcoords="offset points", fontsize=6, va="top")
        return fig


def _perturbation_reference(ax, data: dict[str, np.ndarray]) -> None:
    """The attack's L2 size next to the radii: a line when on scale, else a note (a radius below
    it certifies nothing about this attack)."""
    if not len(data["sigma"]):
        return
    size = float(data["perturbation_l2"][0])
    top = float(np.nanmax(np.concatenate([data["class_radius"], data["topk_radius_l2"]])))
    if size <= 2.0 * max(top, 1e-9):
        ax.axhline(size, color=COLORS["perturbation"], linestyle=":", linewidth=0.9, label="attack ‖δ‖₂")
    else:  # far above the radii: a legend note keeps the radii readable
        ax.plot([], [], linestyle="none", label=f"attack ‖δ‖₂ = {size:.2f} (off scale)")


def _sigma_ticks(ax, sigmas: np.ndarray) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sigmas, [f"{v:g}" for v in sigmas])
    ax.minorticks_off()


def layer_heads_figure(maps: np.ndarray, grid_size: tuple[int, int], *, model: str = "Vanilla ViT",
                       subtitle: str = "") -> Figure:
    """Per-layer, per-head [CLS] attention of the vanilla ViT, clean (left) vs attacked (right).

    ``maps``: (2, L, heads, P) from :func:`fvit_core.explanations.explorer.layer_head_attention`. The colour
    scale is shared within each layer (clean and attacked, all heads), so a row compares directly.
    """
    maps = _check_layer_maps(maps, grid_size)
    _, layers, heads, _ = maps.shape
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 0.45 + 0.52 * layers)
        axes = np.atleast_2d(fig.subplots(layers, 2 * heads, squeeze=False))
        for layer in range(layers):
            vmax = float(maps[:, layer].max()) or 1.0
            for image in range(2):
                for head in range(heads):
                    ax = axes[layer, image * heads + head]
                    ax.imshow(attention_grid(maps[image, layer, head], grid_size), cmap=ATTENTION_CMAP,
                              vmin=0.0, vmax=vmax, interpolation="nearest")
                    _image_axes(ax)
                    if layer == 0:
                        ax.set_title(f"{('clean', 'attacked')[image]}\nhead {head + 1}", fontsize=6)
                    if image == 0 and head == 0:
                        ax.set_ylabel(f"layer {layer + 1}", fontsize=6)
        fig.suptitle(f"{model} [CLS] attention per layer and head (scale shared within a row)"
                     + (f"\n{subtitle}" if subtitle else ""), fontsize=6)
        fig.colorbar(mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0.0, 1.0), cmap=ATTENTION_CMAP), ax=axes,
                     fraction=0.03, pad=0.01, label="weight ÷ the row's largest weight")
        return fig


def layer_head_overlap(maps: np.ndarray, k: int) -> np.ndarray:
    """V_k between the clean and the attacked map of every layer and head: (layers, heads)."""
    from fvit_core.analysis.metrics import topk_overlap

    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4 or maps.shape[0] != 2:
        raise ValueError(f"maps must be (2, layers, heads, P) for clean and attacked, got {maps.shape}")
    return np.asarray(topk_overlap(maps[0].reshape(-1, maps.shape[-1]), maps[1].reshape(-1, maps.shape[-1]), k),
                      dtype=np.float64).reshape(maps.shape[1:3])


def _check_layer_maps(maps: np.ndarray, grid_size: tuple[int, int]) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4 or maps.shape[0] != 2 or maps.shape[-1] != grid_size[0] * grid_size[1]:
        raise ValueError(f"maps must be (2, layers, heads, {grid_size[0] * grid_size[1]}) for clean and attacked, "
                         f"got {maps.shape}")
    return maps


# --------------------------------------------------------------------------------------------
# Plotly figures (interactive; same colours and scales)
# --------------------------------------------------------------------------------------------


def _plotly():
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    return go, make_subplots


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def inferno_scale() -> list[list]:
    """The inferno colour scale as plotly stops with rgb() colours. Streamlit's chart component
    misreads the hex stop '#000004' (value 0 drawn lavender), so no hex strings are passed."""
    from plotly.colors import hex_to_rgb, sequential

    stops = sequential.Inferno
    return [[i / (len(stops) - 1), "rgb({}, {}, {})".format(*hex_to_rgb(c))] for i, c in enumerate(stops)]


_PLOTLY_LAYOUT: dict[str, Any] = dict(template="plotly_white", font=dict(size=12), margin=dict(l=10, r=10, t=60, b=10))
# Subplots with their own titles under a two-line figure title (title + settings) need more room.
_TITLED_SUBPLOTS: dict[str, Any] = {**_PLOTLY_LAYOUT, "margin": dict(l=10, r=10, t=100, b=10)}


def _plotly_outlines(fig, indices: np.ndarray, grid: tuple[int, int], shape: tuple[int, int], row: int, col: int,
                     color: str, dash: str = "solid") -> None:
    rows, cols = grid
    ph, pw = shape[0] / rows, shape[1] / cols
    for index in np.asarray(indices, dtype=int):
        r, c = divmod(int(index), cols)
        fig.add_shape(type="rect", x0=c * pw - 0.5, x1=(c + 1) * pw - 0.5, y0=r * ph - 0.5, y1=(r + 1) * ph - 0.5,
                      line=dict(color=color, width=2, dash=dash), row=row, col=col)


def patch_ranks(attention: np.ndarray) -> np.ndarray:
    """Rank of every patch by weight: 1 = the largest (ties in patch order, as topk_indices)."""
    order = np.argsort(-np.asarray(attention, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def patch_hover_data(cmp_: ModelComparison, grid: tuple[int, int]) -> np.ndarray:
    """Per patch (rows, cols, 5): index, clean weight, clean rank, attacked weight, attacked rank,
    for the hover text of a map (the same on the clean and the attacked panel)."""
    clean, attacked = np.asarray(cmp_.clean.attention), np.asarray(cmp_.attacked.attention)
    columns = (np.arange(len(clean)), clean, patch_ranks(clean), attacked, patch_ranks(attacked))
    return np.stack([attention_grid(c, grid) for c in columns], axis=-1)


_PATCH_HOVER = ("patch %{customdata[0]:.0f}<br>clean: weight %{customdata[1]:.4f}, rank %{customdata[2]:.0f}"
                "<br>attacked: weight %{customdata[3]:.4f}, rank %{customdata[4]:.0f}<extra></extra>")


def _square_axes(fig, n_panels: int) -> None:
    """Square pixels in every panel: each y axis anchored to its own x axis (anchoring all of
    them to the first x axis stretches the other panels)."""
    for i in range(1, n_panels + 1):
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", scaleratio=1, constrain="domain",
                                             autorange="reversed", showticklabels=False, showgrid=False, zeroline=False)
        fig.layout[f"xaxis{suffix}"].update(constrain="domain", showticklabels=False, showgrid=False, zeroline=False)


def _attention_panel(fig, result: AnalysisResult, which: str, name: str, row: int, col: int,
                     hover: np.ndarray) -> None:
    """One map: the image, its patch weights on the shared colour axis, top-k outlines and, on
    the attacked image, the clean top-k patches it lost (dotted)."""
    go, _ = _plotly()
    k, grid = result.config.k, result.grid_size
    cmp_ = comparison(result, which)
    image = result.clean_view if name == "clean" else result.attacked_view  # as the classifier saw it
    height, width = image.shape[1:]
    ph, pw = height / grid[0], width / grid[1]
    view = getattr(cmp_, name)
    fig.add_trace(go.Image(z=np.round(to_hwc(image) * 255).astype(np.uint8), hoverinfo="skip"), row=row, col=col)
    fig.add_trace(go.Heatmap(
        z=attention_grid(view.attention, grid), x0=(pw - 1) / 2, dx=pw, y0=(ph - 1) / 2, dy=ph,
        coloraxis="coloraxis", opacity=OVERLAY_ALPHA, name=f"{which} {name}", customdata=hover,
        hovertemplate=_PATCH_HOVER, xgap=0, ygap=0,
    ), row=row, col=col)
    _plotly_outlines(fig, topk_indices(view.attention, k), grid, (height, width), row, col, TOPK_EDGE)
    if name == "attacked":
        lost = _lost_patches(cmp_.clean.attention, cmp_.attacked.attention, k)
        _plotly_outlines(fig, lost, grid, (height, width), row, col, LOST_EDGE, "dot")


def plotly_attention_maps(result: AnalysisResult, which: str, *, vmax: float | None = None,
                          height: int = 360) -> go.Figure:
    """One model's clean and attacked focal-point maps side by side (the Compare page's maps).

    Square patches, one colour scale 0..``vmax`` (default :func:`attention_scale`, shared with
    the other model); hovering a patch shows its index and its weight and rank (1 = largest) on
    the clean and on the attacked image. Cyan: top-k patches; dotted white: clean top-k lost.
    """
    go, make_subplots = _plotly()
    cmp_ = comparison(result, which)
    vmax = attention_scale(result) if vmax is None else vmax
    titles = [f"{name}: {getattr(cmp_, name).label_name} ({getattr(cmp_, name).confidence:.2f})"
              for name in ("clean", "attacked")]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.03)
    hover = patch_hover_data(cmp_, result.grid_size)
    for col, name in enumerate(("clean", "attacked"), start=1):
        _attention_panel(fig, result, which, name, 1, col, hover)
    _square_axes(fig, 2)
    # The colour bar lies under the maps: beside them it would take width from the maps.
    fig.update_layout(
        **{**_PLOTLY_LAYOUT, "margin": dict(l=2, r=2, t=30, b=2)}, height=height,
        coloraxis=dict(colorscale=inferno_scale(), cmin=0.0, cmax=vmax,
                       colorbar=dict(title=dict(text="attention weight", side="top"), orientation="h",
                                     thickness=10, len=0.9, y=-0.04, yanchor="top")),
        hoverlabel=dict(font_size=13), dragmode="zoom",
    )
    return fig


def plotly_compare(result: AnalysisResult) -> go.Figure:
    """Interactive version of :func:`compare_figure`: the four maps on one colour scale, square
    patches, hover with each patch's index, weight and rank on the clean and attacked image."""
    _, make_subplots = _plotly()
    k = result.config.k
    titles = []
    for name in ("clean", "attacked"):
        for which in MODEL_KEYS:
            view = getattr(comparison(result, which), name)
            titles.append(f"{model_label(result, which)}, {name}: {view.label_name} ({view.confidence:.2f})")
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.08)
    hovers = {which: patch_hover_data(comparison(result, which), result.grid_size) for which in MODEL_KEYS}
    for row, name in enumerate(("clean", "attacked"), start=1):
        for col, which in enumerate(MODEL_KEYS, start=1):
            _attention_panel(fig, result, which, name, row, col, hovers[which])
    _square_axes(fig, 4)
    fig.update_layout(
        **_TITLED_SUBPLOTS, height=900,
        coloraxis=dict(colorscale=inferno_scale(), cmin=0.0, cmax=attention_scale(result), colorbar=dict(title="attention weight")),
        title=dict(text=f"Top-{k} focal patches (cyan; dotted white: clean top-{k} lost). "
                        f"V{sub(k)}: vanilla {result.vanilla.topk_overlap:.2f}, FViT {result.fvit.topk_overlap:.2f}"
                        + (f" (noise floor {result.faithful.topk_overlap_floor:.2f})"
                           if result.faithful.topk_overlap_floor is not None else "")
                        + f"<br><sub>{settings_text(result)}</sub>"),
    )
    return fig


def plotly_inputs(result: AnalysisResult) -> go.Figure:
    """Clean, attacked, amplified perturbation and one denoised sample as images."""
    go, make_subplots = _plotly()
    shown, gain = perturbation_view(result)
    panels = (("clean", result.clean_image), ("attacked", result.attacked_image),
              (f"perturbation ×{gain:.0f}", shown), ("denoised sample", result.faithful.denoised_sample))
    fig = make_subplots(rows=1, cols=4, subplot_titles=[t for t, _ in panels], horizontal_spacing=0.02)
    for col, (_, image) in enumerate(panels, start=1):
        fig.add_trace(go.Image(z=np.round(to_hwc(image) * 255).astype(np.uint8)), row=1, col=col)
    _square_axes(fig, 4)
    fig.update_layout(**_PLOTLY_LAYOUT, height=340, title=dict(text=f"<sub>{settings_text(result)}</sub>"))
    return fig


def plotly_distributions(result: AnalysisResult, top: int = 10) -> go.Figure:
    """Interactive grouped bars: clean vs attacked prediction distribution per model."""
    go, make_subplots = _plotly()
    probs = [getattr(comparison(result, w), n).probs for w in MODEL_KEYS for n in ("clean", "attacked")]
    classes = top_classes(probs, top)
    names = [result.class_names[i] for i in classes]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=[model_label(result, w) for w in MODEL_KEYS])
    for col, which in enumerate(MODEL_KEYS, start=1):
        cmp_ = comparison(result, which)
        for name, alpha in (("clean", CLEAN_ALPHA), ("attacked", 1.0)):
            fig.add_trace(go.Bar(
                y=names, x=getattr(cmp_, name).probs[classes], orientation="h", name=f"{model_label(result, which)}, {name}",
                marker_color=_rgba(COLORS[which], alpha), legendgroup=which,
                hovertemplate="%{y}: %{x:.3f}<extra>" + name + "</extra>",
            ), row=1, col=col)
        fig.update_xaxes(title_text="probability", range=[0, 1], row=1, col=col)
    fig.update_yaxes(autorange="reversed", title_text="class")
    fig.update_layout(**_TITLED_SUBPLOTS, barmode="group", height=max(320, 90 + 34 * len(classes)),
                      title=f"Prediction distributions, clean vs attacked<br><sub>{settings_text(result)}</sub>",
                      legend=dict(orientation="h", y=-0.15))
    return fig


def plotly_votes(result: AnalysisResult, top: int = 10) -> go.Figure:
    """DDS vote counts per class on the clean and attacked image."""
    go, _ = _plotly()
    d = result.faithful
    classes = top_classes([d.votes_clean, d.votes_attacked], top)
    names = [result.class_names[i] for i in classes]
    fig = go.Figure()
    for name, votes, alpha in (("clean", d.votes_clean, CLEAN_ALPHA), ("attacked", d.votes_attacked, 1.0)):
        fig.add_trace(go.Bar(y=names, x=votes[classes], orientation="h", name=name,
                             marker_color=_rgba(COLORS["fvit"], alpha), hovertemplate="%{y}: %{x} votes<extra></extra>"))
    fig.update_xaxes(title_text=f"votes (of {d.n_samples} noise samples)", range=[0, d.n_samples])
    fig.update_yaxes(autorange="reversed", title_text="class")
    fig.update_layout(**_PLOTLY_LAYOUT, barmode="group", height=max(300, 80 + 30 * len(classes)),
                      title=f"{model_label(result, 'fvit')}: hard votes per class<br><sub>{settings_text(result)}</sub>")
    return fig


def plotly_divergence(result: AnalysisResult) -> go.Figure:
    """Measured Renyi divergences vs the FViT's prediction-stability bound (log scale)."""
    go, _ = _plotly()
    rows = divergence_rows(result)
    labels = [re.sub(r"D\$_\{([^}]*)\}\$", lambda m: "D" + sub(float(m.group(1))), label) for label, _, _ in rows]
    values = [max(v, 1e-6) for _, v, _ in rows]
    fig = go.Figure(go.Bar(y=labels, x=values, orientation="h", marker_color=[c for _, _, c in rows],
                           text=[f"{v:.3g}" for _, v, _ in rows], textposition="outside",
                           hovertemplate="%{y}: %{x:.4g} nats<extra></extra>"))
    fig.update_xaxes(type="log", dtick=1, title_text="Rényi divergence, clean vs attacked (nats, log scale)")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(**_PLOTLY_LAYOUT, height=280,
                      title=f"Prediction stability: measured divergence vs bound<br><sub>{settings_text(result)}</sub>")
    return fig


def plotly_overlap_curve(result: AnalysisResult) -> go.Figure:
    """Interactive V_k vs k: vanilla, FViT, chance, and the FViT's CI and noise floor at the current k."""
    go, _ = _plotly()
    p = len(result.vanilla.overlap_curve)
    ks = np.arange(1, p + 1)
    k, d = result.config.k, result.faithful
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ks, y=chance_overlap(p), name="chance (k/P)", line=dict(color=COLORS["chance"], dash="dash")))
    for which in MODEL_KEYS:
        fig.add_trace(go.Scatter(x=ks, y=comparison(result, which).overlap_curve, name=model_label(result, which),
                                 line=dict(color=COLORS[which], width=2.5),
                                 hovertemplate="k = %{x}: Vₖ = %{y:.3f}<extra></extra>"))
    if d.topk_overlap_ci is not None:
        v, (lo, hi) = result.fvit.topk_overlap, d.topk_overlap_ci
        fig.add_trace(go.Scatter(x=[k], y=[v], mode="markers", name=f"FViT V{sub(k)}, 95% bootstrap CI",
                                 marker=dict(color=COLORS["fvit"], size=9),
                                 error_y=dict(type="data", symmetric=False, array=[hi - v], arrayminus=[v - lo])))
    if d.topk_overlap_floor is not None:
        floor = d.topk_overlap_floor
        err = None
        if d.topk_overlap_floor_ci is not None:
            err = dict(type="data", symmetric=False, array=[d.topk_overlap_floor_ci[1] - floor],
                       arrayminus=[floor - d.topk_overlap_floor_ci[0]])
        fig.add_trace(go.Scatter(x=[k + _floor_offset(p)], y=[floor], mode="markers", name="noise floor (clean vs clean)",
                                 marker=dict(color=COLORS["floor"], size=9, symbol="square-open"), error_y=err))
    fig.add_vline(x=k, line=dict(color=COLORS["current"], dash="dot"))
    fig.update_xaxes(title_text="k (number of top patches)", range=[0.5, p + 0.5])
    fig.update_yaxes(title_text="top-k overlap Vₖ (clean vs attacked)", range=[0, 1.02])
    fig.update_layout(**_PLOTLY_LAYOUT, height=440,
                      title=f"Top-k overlap as a function of k<br><sub>{settings_text(result)}</sub>",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def plotly_sigma_sweep(rows: Sequence[dict], current_sigma: float | None = None) -> go.Figure:
    """Interactive sigma sweep: V_k (with CI and floor), FViT confidence, certified radii."""
    go, make_subplots = _plotly()
    data = _sweep_columns(rows)
    s = data["sigma"]
    k = int(rows[0]["k"]) if rows else 0
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=(f"top-{k} overlap V{sub(k)}", "FViT confidence", "certified radius (L2)"))

    def line(y, name, color, col, **kw):
        fig.add_trace(go.Scatter(x=s, y=y, name=name, mode="lines+markers", line=dict(color=color, **kw.pop("line", {})),
                                 **kw), row=1, col=col)

    line(data["vanilla_overlap"], "vanilla ViT Vₖ", COLORS["vanilla"], 1)
    if np.isfinite(data["fvit_overlap_ci_low"]).any():
        fig.add_trace(go.Scatter(x=np.concatenate([s, s[::-1]]),
                                 y=np.concatenate([data["fvit_overlap_ci_high"], data["fvit_overlap_ci_low"][::-1]]),
                                 fill="toself", fillcolor=_rgba(COLORS["fvit"], 0.15), line=dict(width=0),
                                 mode="lines", name="FViT 95% CI", hoverinfo="skip"), row=1, col=1)
    line(data["fvit_overlap"], "FViT Vₖ", COLORS["fvit"], 1)
    line(data["noise_floor"], "noise floor", COLORS["floor"], 1, line=dict(dash="dash"))
    line(data["fvit_clean_confidence"], "FViT clean confidence", _rgba(COLORS["fvit"], 0.5), 2)
    line(data["fvit_attacked_confidence"], "FViT attacked confidence", COLORS["fvit"], 2)
    flipped = np.array([not r["fvit_label_kept"] for r in sorted(rows, key=lambda r: float(r["sigma"]))], dtype=bool)
    if flipped.any():
        fig.add_trace(go.Scatter(x=s[flipped], y=data["fvit_attacked_confidence"][flipped], mode="markers",
                                 name="FViT label flipped", marker=dict(symbol="x", size=11, color="black")),
                      row=1, col=2)
    line(data["class_radius"], "class radius (L2)", COLORS["radius_class"], 3)
    line(data["topk_radius_l2"], "top-k radius (L2)", COLORS["radius_topk"], 3)
    if len(s):
        size = float(data["perturbation_l2"][0])
        top = float(np.nanmax(np.concatenate([data["class_radius"], data["topk_radius_l2"]])))
        if size <= 2.0 * max(top, 1e-9):
            fig.add_hline(y=size, line=dict(color=COLORS["perturbation"], dash="dot"),
                          annotation_text="attack ‖δ‖₂", row=1, col=3)
        else:
            fig.layout.annotations[2].text += f"<br><sub>attack ‖δ‖₂ = {size:.2f} is above every radius</sub>"
    if current_sigma is not None:
        for col in (1, 2, 3):
            fig.add_vline(x=current_sigma, line=dict(color=COLORS["current"], dash="dot"), row=1, col=col)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="σ (pixel units, log)", type="log", tickvals=list(s),
                         ticktext=[f"{v:g}" for v in s], row=1, col=col)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], title_text="confidence", row=1, col=2)
    fig.update_yaxes(title_text="radius (pixel units)", row=1, col=3)
    fig.update_layout(**_TITLED_SUBPLOTS, height=420, legend=dict(orientation="h", y=-0.25),
                      title="Sweep over σ" + (f" (current σ = {current_sigma:g})" if current_sigma is not None else "")
                            + f"<br><sub>{sweep_settings_text(rows)}</sub>")
    return fig


def plotly_layer_heads(maps: np.ndarray, grid_size: tuple[int, int], *, model: str = "Vanilla ViT",
                       subtitle: str = "") -> go.Figure:
    """Interactive per-layer, per-head attention; each layer scaled by its own maximum (the colour
    bar is the fraction of it; hover gives the weight itself)."""
    go, make_subplots = _plotly()
    maps = _check_layer_maps(maps, grid_size)
    _, layers, heads, _ = maps.shape
    titles = [f"L{layer + 1} {('clean', 'attacked')[i]} h{h + 1}" for layer in range(layers) for i in range(2)
              for h in range(heads)]
    fig = make_subplots(rows=layers, cols=2 * heads, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.03)
    for layer in range(layers):
        scale = float(maps[:, layer].max()) or 1.0
        for i in range(2):
            for h in range(heads):
                fig.add_trace(go.Heatmap(z=attention_grid(maps[i, layer, h], grid_size) / scale, coloraxis="coloraxis",
                                         customdata=attention_grid(maps[i, layer, h], grid_size),
                                         hovertemplate=f"layer {layer + 1}, head {h + 1}, {('clean', 'attacked')[i]}"
                                                       "<br>weight %{customdata:.4f}<extra></extra>"),
                              row=layer + 1, col=i * heads + h + 1)
    _square_axes(fig, layers * 2 * heads)
    fig.update_annotations(font_size=9)
    fig.update_layout(**_TITLED_SUBPLOTS, height=110 * layers + 110,
                      coloraxis=dict(colorscale=inferno_scale(), cmin=0, cmax=1,
                                     colorbar=dict(title=dict(text="weight ÷ layer's largest", side="right"))),
                      title=f"{model} [CLS] attention per layer and head, clean vs attacked"
                            + (f"<br><sub>{subtitle}</sub>" if subtitle else ""))
    return fig


# --------------------------------------------------------------------------------------------
# Registry of the figures that need only the result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """A figure of one result, in both back-ends."""

    name: str
    title: str
    matplotlib: Callable[["AnalysisResult"], Figure]
    plotly: Callable[["AnalysisResult"], Any]


RESULT_FIGURES: dict[str, FigureSpec] = {
    spec.name: spec for spec in (
        FigureSpec("compare", "Attention: vanilla ViT vs FViT, clean vs attacked", compare_figure, plotly_compare),
        FigureSpec("inputs", "Clean, attacked, perturbation, denoised sample", inputs_figure, plotly_inputs),
        FigureSpec("distributions", "Prediction distributions", distributions_figure, plotly_distributions),
        FigureSpec("votes", "DDS vote counts", votes_figure, plotly_votes),
        FigureSpec("divergence", "Measured divergence vs bound", divergence_figure, plotly_divergence),
        FigureSpec("overlap_curve", "Top-k overlap vs k", overlap_curve_figure, plotly_overlap_curve),
    )
}


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

_MIME: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf",
                         "html": "text/html", "json": "application/json", "csv": "text/csv", "zip": "application/zip"}


def mime_type(fmt: str) -> str:
    """MIME type of an export format (png, svg, pdf, html, json, csv, zip)."""
    if fmt not in _MIME:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(_MIME)}")
    return _MIME[fmt]


def _check_format(fmt: str) -> str:
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}, got {fmt!r}")
    return fmt


def figure_to_bytes(fig: Figure, fmt: str = "png", *, dpi: int = SAVE_DPI) -> bytes:
    """Encode a matplotlib figure as PNG, SVG or PDF (no timestamps: same figure, same bytes)."""
    _check_format(fmt)
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}[fmt]
    buffer = io.BytesIO()
    with publication_style():
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


def plotly_to_html(fig: Any, *, include_plotlyjs: bool | str = True) -> bytes:
    """A self-contained HTML page of a plotly figure (plotly.js inlined: works offline)."""
    return fig.to_html(include_plotlyjs=include_plotlyjs, full_html=True, config={"displaylogo": False}).encode("utf-8")


def result_json(result: AnalysisResult) -> bytes:
    """The documented result JSON (``AnalysisResult.dumps``), UTF-8."""
    return result.dumps().encode("utf-8")


def settings_json(config: AnalysisConfig) -> bytes:
    """The settings as a JSON object of :class:`AnalysisConfig` fields: ``fvit analyze IMAGE
    --config FILE`` reproduces the analysis (same image, same seed, same numbers)."""
    return (json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")


METRIC_COLUMNS: tuple[str, ...] = (
    "model", "clean_label", "clean_confidence", "attacked_label", "attacked_confidence", "label_flip", "k",
    "topk_overlap", "topk_overlap_ci_low", "topk_overlap_ci_high", "noise_floor", "noise_floor_ci_low",
    "noise_floor_ci_high", "kl", "js", "tv", "hellinger", "renyi", "renyi_alpha", "class_radius_l2",
    "topk_radius_l2", "topk_radius_linf", "prediction_bound", "perturbation_l2", "perturbation_linf",
    "attack", "method", "head_fusion", "mode", "sigma", "n_samples", "n_samples_requested", "seed",
)


def metrics_rows(result: AnalysisResult) -> list[dict[str, Any]]:
    """One row of key metrics per model (vanilla, fvit); fields that do not apply are None.

    Every row names the analysis settings (explanation method, head fusion, sigma, N drawn and
    asked, k, seed), so a row read on its own says what it measured; ``mode`` is empty for the
    vanilla ViT, which is not smoothed."""
    d, c, cfg = result.faithful, result.faithful.certified, result.config
    rows = []
    for which in MODEL_KEYS:
        cmp_ = comparison(result, which)
        fvit = which == "fvit"
        ci, floor_ci = (d.topk_overlap_ci, d.topk_overlap_floor_ci) if fvit else (None, None)
        rows.append({
            "model": which, "clean_label": cmp_.clean.label_name, "clean_confidence": cmp_.clean.confidence,
            "attacked_label": cmp_.attacked.label_name, "attacked_confidence": cmp_.attacked.confidence,
            "label_flip": cmp_.label_flip, "k": cfg.k, "topk_overlap": cmp_.topk_overlap,
            "topk_overlap_ci_low": ci[0] if ci else None, "topk_overlap_ci_high": ci[1] if ci else None,
            "noise_floor": d.topk_overlap_floor if fvit else None,
            "noise_floor_ci_low": floor_ci[0] if floor_ci else None,
            "noise_floor_ci_high": floor_ci[1] if floor_ci else None,
            **{name: cmp_.divergences[name] for name in ("kl", "js", "tv", "hellinger", "renyi")},
            "renyi_alpha": cfg.renyi_alpha,
            "class_radius_l2": c.class_radius if fvit else None,
            "topk_radius_l2": c.topk_radius_l2 if fvit else None,
            "topk_radius_linf": c.topk_radius_linf if fvit else None,
            "prediction_bound": c.prediction_bound if fvit else None,
            "perturbation_l2": result.attack["l2"], "perturbation_linf": result.attack["linf"],
            "attack": result.attack["name"], "method": cfg.method, "head_fusion": cfg.head_fusion,
            "mode": d.mode if fvit else None, "sigma": d.sigma, "n_samples": d.n_samples,
            "n_samples_requested": cfg.n_samples, "seed": cfg.seed,
        })
    return rows


def rows_to_csv(rows: Sequence[dict], columns: Sequence[str] | None = None) -> bytes:
    """Plain rows as CSV (header first; None -> empty cell; floats at full precision)."""
    columns = list(columns or (rows[0].keys() if rows else ()))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    return buffer.getvalue().encode("utf-8")


def metrics_csv(result: AnalysisResult) -> bytes:
    """The key metrics of both models as CSV (:func:`metrics_rows`)."""
    return rows_to_csv(metrics_rows(result), METRIC_COLUMNS)


def _sweep_columns(rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Sweep rows -> float columns sorted by sigma (None -> NaN)."""
    ordered = sorted(rows, key=lambda r: float(r["sigma"]))
    keys = ("sigma", "vanilla_overlap", "fvit_overlap", "fvit_overlap_ci_low", "fvit_overlap_ci_high", "noise_floor",
            "fvit_clean_confidence", "fvit_attacked_confidence", "class_radius", "topk_radius_l2", "perturbation_l2")
    return {key: np.array([math.nan if r.get(key) is None else float(r[key]) for r in ordered], dtype=np.float64)
            for key in keys}


def save_key_figures(result: AnalysisResult, out_dir: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write every figure of :data:`RESULT_FIGURES` (compare, inputs, distributions, votes,
    divergence, overlap_curve) to ``out_dir`` as ``NAME.FORMAT``; returns the paths written."""
    for fmt in formats:
        _check_format(fmt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in RESULT_FIGURES.values():
        fig = spec.matplotlib(result)
        for fmt in formats:
            path = out_dir / f"{spec.name}.{fmt}"
            path.write_bytes(figure_to_bytes(fig, fmt))
            written.append(path)
    return written


def reproduce_command(image_name: str) -> str:
    """The shell command that recomputes an exported analysis from its image and settings file."""
    return f"fvit analyze {image_name} --config settings.json --json result.json --out figures/"


def export_bundle(
    result: AnalysisResult,
    *,
    image_name: str | None = None,
    image_bytes: bytes | None = None,
    sweep_rows: Sequence[dict] | None = None,
    layer_maps: np.ndarray | None = None,
    formats: tuple[str, ...] = FIGURE_FORMATS,
    progress: Callable[[str, float], None] | None = None,
) -> bytes:
    """Everything of one analysis in a ZIP: figures (``formats`` + interactive HTML sharing one
    copy of plotly.js), result JSON, metrics CSV, settings JSON, the input image and a README with
    the command that reproduces it. ``progress(figure name, fraction done)`` is called before
    each figure (a ZIP takes seconds: most of it is rendering the figures)."""
    report = progress or (lambda name, fraction: None)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        builders: list[tuple[str, Callable[[], Figure], Callable[[], Any]]] = [
            (s.name, lambda s=s: s.matplotlib(result), lambda s=s: s.plotly(result)) for s in RESULT_FIGURES.values()]
        if sweep_rows:
            sigma = result.config.sigma
            builders.append(("sigma_sweep", lambda: sigma_sweep_figure(sweep_rows, sigma),
                             lambda: plotly_sigma_sweep(sweep_rows, sigma)))
            archive.writestr("sigma_sweep.csv", rows_to_csv(sweep_rows))
        if layer_maps is not None:
            builders.append(("layer_heads", lambda: layer_heads_figure(layer_maps, result.grid_size),
                             lambda: plotly_layer_heads(layer_maps, result.grid_size)))
        for i, (name, build, build_interactive) in enumerate(builders):
            report(name, i / len(builders))
            fig = build()
            for fmt in formats:
                archive.writestr(f"figures/{name}.{fmt}", figure_to_bytes(fig, fmt))
            archive.writestr(f"interactive/{name}.html", plotly_to_html(build_interactive(), include_plotlyjs="directory"))
        report("results", 1.0)
        from plotly.offline import get_plotlyjs

        archive.writestr("interactive/plotly.min.js", get_plotlyjs())  # once, beside the pages: offline
        archive.writestr("result.json", result_json(result))
        archive.writestr("metrics.csv", metrics_csv(result))
        archive.writestr("settings.json", settings_json(result.config))
        name = image_name or "image.png"
        if image_bytes is not None:
            archive.writestr(name, image_bytes)
        archive.writestr("README.txt", f"Reproduce with:\n  {reproduce_command(name)}\n")
    return buffer.getvalue()
