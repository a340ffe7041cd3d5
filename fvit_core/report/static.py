"""Matplotlib figures of one analysis (publication quality; style.py holds the conventions).

Pure functions over :class:`~fvit_core.analysis.pipeline.AnalysisResult` (plus the plain rows of
:mod:`fvit_core.analysis.sweep` and the numpy maps of :mod:`fvit_core.analysis.explorer`):
built with ``matplotlib.figure.Figure`` (never pyplot), no Streamlit. The dashboard's downloads
and ``fvit analyze --out`` call the same builders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fvit_core.metrics import topk_indices

from fvit_core.report.style import (
    ATTENTION_CMAP, CLEAN_ALPHA, COLORS, LOST_EDGE, MODEL_KEYS, OVERLAY_ALPHA, SINGLE_COLUMN_IN, TOPK_EDGE, MapScale,
    attack_summary, attention_grid, chance_overlap, check_layer_maps, comparison, floor_offset, lost_patches,
    map_scale, method_name, model_label, overlap_text, perturbation_summary, perturbation_view, publication_style,
    settings_text, sweep_columns, to_hwc, top_classes, view_caption
)

if TYPE_CHECKING:  # plotly is imported lazily: the CLI's figures need only matplotlib
    from fvit_core.analysis.result import AnalysisResult


# --------------------------------------------------------------------------------------------
# Matplotlib figures
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


# Characters of 6 pt text per line of a single-column figure, with margins.
_LINE_CHARS = 72


def wrapped(text: str, width: int = _LINE_CHARS) -> str:
    """``text`` broken into lines of at most ``width`` characters at its ' · ' separators (then
    at spaces), so a settings line never runs off a narrow figure."""
    import textwrap

    lines: list[str] = []
    for part in text.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.extend(textwrap.wrap(part, width) or [""])
    return "\n".join(lines)


def _legend_below(fig: Figure, ncol: int = 2, handles=None, labels=None) -> None:
    """One legend for the figure, under its axes: a legend inside an axes covers data
    whatever corner it picks (constrained layout makes room for an 'outside' legend)."""
    if handles is None:
        handles, labels = [], []
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol)


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


def draw_attention(ax, image: np.ndarray, values: np.ndarray, grid: tuple[int, int], k: int, scale: MapScale,
                   *, topk: np.ndarray, lost: np.ndarray | None = None):
    """Image, the map's ``values`` on top (on ``scale``), the top-k patches ``topk`` outlined.

    ``lost``: patch indices to outline dashed (the clean top-k that the attacked map lost).
    Returns the heatmap's mappable for a colour bar.
    """
    height, width = image.shape[1:]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    ax.imshow(to_hwc(image), interpolation="nearest", extent=extent)
    mappable = ax.imshow(attention_grid(values, grid), cmap=scale.cmap, vmin=scale.vmin, vmax=scale.vmax,
                         alpha=OVERLAY_ALPHA, interpolation="nearest", extent=extent)
    _outline(ax, topk, grid, (height, width), color=TOPK_EDGE)
    if lost is not None and len(lost):
        _outline(ax, lost, grid, (height, width), color=LOST_EDGE, style=(0, (2, 1.5)), width=0.8)
    _image_axes(ax)
    return mappable


def _attention_colorbar(fig: Figure, mappable, axes, label: str, orientation: str = "vertical") -> None:
    bar = fig.colorbar(mappable, ax=axes, orientation=orientation, fraction=0.05, pad=0.02, shrink=0.9)
    bar.set_label(label)
    bar.solids.set_alpha(1.0)
    bar.outline.set_linewidth(0.4)


def compare_figure(result: AnalysisResult) -> Figure:
    """The key figure: clean (top) and attacked (bottom) attention of the vanilla ViT (left) and the
    FViT (right), one colour scale, top-k patches outlined, V_k (and the noise floor) per column."""
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 3.55)
        axes = fig.subplots(2, 2)
        scale, grid, k = map_scale(result), result.grid_size, result.config.explanation.k
        mappable = None
        for col, which in enumerate(MODEL_KEYS):
            cmp_ = comparison(result, which)
            for row, (name, image) in enumerate((("clean", result.clean_view), ("attacked", result.attacked_view))):
                view = getattr(cmp_, name)
                lost = lost_patches(cmp_.clean.attention, cmp_.attacked.attention, k) if name == "attacked" else None
                ax = axes[row, col]
                mappable = draw_attention(ax, image, scale.values(view), grid, k, scale,
                                          topk=topk_indices(view.attention, k), lost=lost)
                ax.set_xlabel(view_caption(view), labelpad=2)
                if col == 0:
                    ax.set_ylabel(name, labelpad=2)
            axes[0, col].set_title(f"{model_label(result, which)}\n{overlap_text(result, which)}")
        _attention_colorbar(fig, mappable, axes[:, 1], scale.label, "vertical")
        fig.suptitle(f"{attack_summary(result).split(':')[0]}, {perturbation_summary(result)}; top-{k} outlined\n"
                     f"{wrapped(settings_text(result))}", fontsize=6)
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
        fig.suptitle(wrapped(settings_text(result)), fontsize=6)
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
        fig = _new_figure(SINGLE_COLUMN_IN, 0.75 + 0.17 * len(classes))
        axes = fig.subplots(1, 2, sharey=True, sharex=True)
        for ax, which in zip(axes, MODEL_KEYS):
            cmp_ = comparison(result, which)
            _bars(ax, names, cmp_.clean.probs[classes], cmp_.attacked.probs[classes], COLORS[which])
            ax.set_title(model_label(result, which))
            ax.set_xlabel("probability")
            ax.set_xlim(0, 1)
        # One legend for both panels, in grey: the shade says clean or attacked, the hue the model.
        handles = [Rectangle((0, 0), 1, 1, color=COLORS["chance"], alpha=CLEAN_ALPHA),
                   Rectangle((0, 0), 1, 1, color=COLORS["chance"])]
        _legend_below(fig, 2, handles, ["clean (light)", "attacked (dark)"])
        fig.suptitle(wrapped(settings_text(result)), fontsize=6)
        return fig


def votes_figure(result: AnalysisResult, top: int = 10) -> Figure:
    """DDS hard votes (argmax per noise sample) on the clean and the attacked image."""
    d = result.faithful
    classes = top_classes([d.votes_clean, d.votes_attacked], top)
    names = [result.class_names[i] for i in classes]
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 0.8 + 0.15 * len(classes))
        ax = fig.subplots()
        _bars(ax, names, d.votes_clean[classes], d.votes_attacked[classes], COLORS["fvit"])
        ax.set_xlabel(f"votes (of {d.n_samples} noise samples)")
        ax.set_xlim(0, d.n_samples)
        ax.set_title(f"{model_label(result, 'fvit')}: votes per class\n{wrapped(settings_text(result))}")
        _legend_below(fig, 2)
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
        fig = _new_figure(SINGLE_COLUMN_IN, 1.5)
        ax = fig.subplots()
        c = result.faithful.certified
        # A figure title (centred on the figure, wrapped): an axes title is centred on the bars
        # and runs off the right edge past the long row labels.
        fig.suptitle(f"Prediction stability at R = ‖δ‖₂ = {c.perturbation_l2:.2f}\n{wrapped(settings_text(result))}",
                     fontsize=6)
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
    FViT's Monte Carlo noise floor for every k, and at the current k the FViT's bootstrap interval
    and the floor's."""
    p = len(result.vanilla.overlap_curve)
    ks = np.arange(1, p + 1)
    k, d = result.config.explanation.k, result.faithful
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 3.0)
        ax = fig.subplots()
        ax.plot(ks, chance_overlap(p), color=COLORS["chance"], linestyle="--", linewidth=0.8, label="chance (k/P)")
        for which in MODEL_KEYS:
            ax.plot(ks, comparison(result, which).overlap_curve, color=COLORS[which], label=model_label(result, which))
        if d.overlap_curve_floor is not None:
            ax.plot(ks, d.overlap_curve_floor, color=COLORS["floor"], linestyle=":", linewidth=1.0,
                    label="FViT noise floor (clean vs clean)")
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
            ax.errorbar([k + floor_offset(p)], [floor], yerr=yerr, color=COLORS["floor"], capsize=2, linewidth=0.8,
                        marker="s", markerfacecolor="white", label=f"noise floor at k = {k}" + (", 95% CI" if yerr else ""))
        ax.axvline(k, color=COLORS["current"], linestyle=":", linewidth=0.8)
        ax.set_xlabel("k (number of top patches)")
        ax.set_ylabel("top-k overlap V$_k$ (clean vs attacked)")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0.5, p + 0.5)
        _legend_below(fig, 2)
        ax.set_title(wrapped(settings_text(result)), fontsize=6)
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
    data = sweep_columns(rows)
    s = data["sigma"]
    with publication_style():
        # Wider than one column: each panel's legend sits to its right, off the data.
        fig = _new_figure(1.5 * SINGLE_COLUMN_IN, 4.4)
        ax_v, ax_c, ax_r = fig.subplots(3, 1, sharex=True)
        k = int(rows[0]["k"]) if rows else 0
        current = f" (dotted: current σ = {current_sigma:g})" if current_sigma is not None else ""
        ax_v.set_title(wrapped(f"Sweep over σ{current}: {sweep_settings_text(rows)}"), fontsize=6)
        ax_v.plot(s, data["vanilla_overlap"], color=COLORS["vanilla"], marker="o", label="vanilla ViT")
        ax_v.plot(s, data["fvit_overlap"], color=COLORS["fvit"], marker="o", label="FViT")
        if np.isfinite(data["fvit_overlap_ci_low"]).any():
            ax_v.fill_between(s, data["fvit_overlap_ci_low"], data["fvit_overlap_ci_high"], color=COLORS["fvit"],
                              alpha=0.15, linewidth=0, label="FViT 95% CI")
        ax_v.plot(s, data["noise_floor"], color=COLORS["floor"], marker="s", markerfacecolor="white",
                  linestyle="--", label="noise floor")
        ax_v.set_ylabel(f"top-{k} overlap V$_{{{k}}}$")
        ax_v.set_ylim(0, 1.02)
        ax_v.legend(**_RIGHT_OF_AXES)
        ax_c.plot(s, data["fvit_clean_confidence"], color=COLORS["fvit"], alpha=0.5, marker="o", label="FViT, clean")
        ax_c.plot(s, data["fvit_attacked_confidence"], color=COLORS["fvit"], marker="o", label="FViT, attacked")
        kept = np.array([bool(r["fvit_label_kept"]) for r in sorted(rows, key=lambda r: float(r["sigma"]))], dtype=bool)
        if (~kept).any():
            ax_c.plot(s[~kept], data["fvit_attacked_confidence"][~kept], linestyle="none", marker="x", color="black",
                      markersize=5, label="label flipped")
        ax_c.set_ylabel("confidence of\npredicted class")
        ax_c.set_ylim(0, 1.02)
        ax_c.legend(**_RIGHT_OF_AXES)
        ax_r.plot(s, data["class_radius"], color=COLORS["radius_class"], marker="o", label="class radius (L2)")
        ax_r.plot(s, data["topk_radius_l2"], color=COLORS["radius_topk"], marker="o", label="top-k radius (L2)")
        _perturbation_reference(ax_r, data)
        ax_r.set_ylabel("certified radius\n(L2, pixel units)")
        ax_r.set_xlabel("σ (noise std, pixel units, log scale)")
        ax_r.set_ylim(bottom=0)
        ax_r.legend(**_RIGHT_OF_AXES)
        _sigma_ticks(ax_r, s)
        if current_sigma is not None:
            for ax in (ax_v, ax_c, ax_r):
                ax.axvline(current_sigma, color=COLORS["current"], linestyle=":", linewidth=0.8)
        return fig


# A panel's legend outside it, on the right (constrained layout makes room for it).
_RIGHT_OF_AXES = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


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
                       subtitle: str = "", images: tuple[np.ndarray, np.ndarray] | None = None) -> Figure:
    """Per-layer, per-head [CLS] attention of one model, clean (left) vs attacked (right).

    ``maps``: (2, L, heads, P) from :func:`fvit_core.analysis.explorer.layer_head_attention`. The colour
    scale is shared within each layer (clean and attacked, all heads), so a row compares directly.
    ``images``: the clean and the attacked input as the classifier saw them ((3, H, W) in [0, 1]),
    drawn under the tiles so a weight can be read against the object.
    """
    maps = check_layer_maps(maps, grid_size)
    _, layers, heads, _ = maps.shape
    if images is not None:
        images = tuple(np.asarray(image, dtype=np.float32) for image in images)
        if len(images) != 2 or any(image.ndim != 3 or image.shape[0] != 3 for image in images):
            raise ValueError("images must be the clean and the attacked image, each (3, H, W)")
    with publication_style():
        fig = _new_figure(SINGLE_COLUMN_IN, 0.45 + 0.52 * layers)
        axes = np.atleast_2d(fig.subplots(layers, 2 * heads, squeeze=False))
        for layer in range(layers):
            vmax = float(maps[:, layer].max()) or 1.0
            for image in range(2):
                for head in range(heads):
                    ax = axes[layer, image * heads + head]
                    tile = attention_grid(maps[image, layer, head], grid_size)
                    if images is None:
                        ax.imshow(tile, cmap=ATTENTION_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest")
                    else:
                        height, width = images[image].shape[1:]
                        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
                        ax.imshow(to_hwc(images[image]), interpolation="nearest", extent=extent)
                        ax.imshow(tile, cmap=ATTENTION_CMAP, vmin=0.0, vmax=vmax, alpha=OVERLAY_ALPHA,
                                  interpolation="nearest", extent=extent)
                    _image_axes(ax)
                    if layer == 0:
                        ax.set_title(f"{('clean', 'attacked')[image]}\nhead {head + 1}", fontsize=6)
                    if image == 0 and head == 0:
                        ax.set_ylabel(f"layer {layer + 1}", fontsize=6)
        fig.suptitle(f"{model} [CLS] attention per layer and head (scale shared within a row)"
                     + (f"\n{wrapped(subtitle)}" if subtitle else ""), fontsize=6)
        # Under the tiles: a vertical bar's label is longer than a figure of few layers is tall.
        fig.colorbar(mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0.0, 1.0), cmap=ATTENTION_CMAP), ax=axes,
                     orientation="horizontal", fraction=0.04, pad=0.02, aspect=40,
                     label="weight ÷ the row's largest weight")
        return fig


def layer_head_overlap(maps: np.ndarray, k: int) -> np.ndarray:
    """V_k between the clean and the attacked map of every layer and head: (layers, heads)."""
    from fvit_core.metrics import topk_overlap

    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4 or maps.shape[0] != 2:
        raise ValueError(f"maps must be (2, layers, heads, P) for clean and attacked, got {maps.shape}")
    return np.asarray(topk_overlap(maps[0].reshape(-1, maps.shape[-1]), maps[1].reshape(-1, maps.shape[-1]), k),
                      dtype=np.float64).reshape(maps.shape[1:3])
