"""Plotly figures of one analysis (the dashboard's interactive views), with the colours and
scales of the matplotlib figures (style.py)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fvit_core.metrics import topk_indices

from fvit_core.report.style import (
    CLEAN_ALPHA, COLORS, LOST_EDGE, MODEL_KEYS, OVERLAY_ALPHA, TOPK_EDGE, MapScale, attention_grid, chance_overlap,
    check_layer_maps, comparison, floor_offset, lost_patches, map_scale, model_label, perturbation_view,
    settings_text, sub, sweep_columns, to_hwc, top_classes
)
from fvit_core.report.static import divergence_rows, sweep_settings_text

if TYPE_CHECKING:  # plotly is imported lazily: the CLI's figures need only matplotlib
    import plotly.graph_objects as go

    from fvit_core.analysis.result import AnalysisResult, ModelComparison


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


def colour_scale(scale: MapScale) -> list[list]:
    """The plotly stops of a :class:`MapScale`'s colour map (matplotlib's, sampled), rgb() colours."""
    if scale.cmap == "inferno":
        return inferno_scale()
    import matplotlib as mpl

    cmap = mpl.colormaps[scale.cmap]
    return [[i / 10, "rgb({}, {}, {})".format(*(round(255 * c) for c in cmap(i / 10)[:3]))] for i in range(11)]


def _coloraxis(scale: MapScale, colorbar: dict) -> dict:
    return dict(colorscale=colour_scale(scale), cmin=scale.vmin, cmax=scale.vmax,
                colorbar={**colorbar, "title": {**colorbar.get("title", {}), "text": scale.label}})


_PLOTLY_LAYOUT: dict[str, Any] = dict(template="plotly_white", font=dict(size=12), margin=dict(l=10, r=10, t=60, b=10))
# Subplots with their own titles under a two-line figure title (title + settings) need more room.
_TITLED_SUBPLOTS: dict[str, Any] = {**_PLOTLY_LAYOUT, "margin": dict(l=10, r=10, t=100, b=10)}


def outline_path(indices: np.ndarray, grid: tuple[int, int], shape: tuple[int, int]) -> tuple[list, list]:
    """x and y (pixel coordinates of the panel) of closed rectangles around the given patches,
    one after another, separated by None: one plotly line trace draws them all."""
    rows, cols = grid
    ph, pw = shape[0] / rows, shape[1] / cols
    xs: list = []
    ys: list = []
    for index in np.asarray(indices, dtype=int):
        r, c = divmod(int(index), cols)
        x0, x1, y0, y1 = c * pw - 0.5, (c + 1) * pw - 0.5, r * ph - 0.5, (r + 1) * ph - 0.5
        xs += [x0, x1, x1, x0, x0, None]
        ys += [y0, y0, y1, y1, y0, None]
    return xs, ys


def _plotly_outlines(fig, indices: np.ndarray, grid: tuple[int, int], shape: tuple[int, int], row: int, col: int,
                     color: str, dash: str = "solid", name: str = "") -> None:
    # One line trace per set of boxes, not one layout shape per box: plotly validates every shape
    # through its property machinery, which made the Compare page's maps take 0.2 s to build, a
    # fifth of the sigma slider's round trip (issue 24); a trace validates two arrays.
    go, _ = _plotly()
    xs, ys = outline_path(indices, grid, shape)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=2, dash=dash), hoverinfo="skip",
                             showlegend=False, name=name), row=row, col=col)


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
                     hover: np.ndarray, scale: MapScale) -> None:
    """One map: the image, its values on the shared colour axis (``scale``), top-k outlines and,
    on the attacked image, the clean top-k patches it lost (dotted)."""
    go, _ = _plotly()
    k, grid = result.config.explanation.k, result.grid_size
    cmp_ = comparison(result, which)
    image = result.clean_view if name == "clean" else result.attacked_view  # as the classifier saw it
    height, width = image.shape[1:]
    ph, pw = height / grid[0], width / grid[1]
    view = getattr(cmp_, name)
    fig.add_trace(go.Image(z=np.round(to_hwc(image) * 255).astype(np.uint8), hoverinfo="skip"), row=row, col=col)
    fig.add_trace(go.Heatmap(
        z=attention_grid(scale.values(view), grid), x0=(pw - 1) / 2, dx=pw, y0=(ph - 1) / 2, dy=ph,
        coloraxis="coloraxis", opacity=OVERLAY_ALPHA, name=f"{which} {name}", customdata=hover,
        hovertemplate=_PATCH_HOVER, xgap=0, ygap=0,
    ), row=row, col=col)
    _plotly_outlines(fig, topk_indices(view.attention, k), grid, (height, width), row, col, TOPK_EDGE,
                     name=f"{which} {name} top-{k}")
    if name == "attacked":
        lost = lost_patches(cmp_.clean.attention, cmp_.attacked.attention, k)
        _plotly_outlines(fig, lost, grid, (height, width), row, col, LOST_EDGE, "dot", name=f"{which} clean top-{k} lost")


def plotly_attention_maps(result: AnalysisResult, which: str, *, scale: MapScale | None = None,
                          height: int = 360) -> go.Figure:
    """One model's clean and attacked focal-point maps side by side (the Compare page's maps).

    Square patches, one colour scale (default :func:`map_scale`, shared with the other model);
    hovering a patch shows its index and its weight and rank (1 = largest) on the clean and on
    the attacked image. Cyan: top-k patches; dotted white: clean top-k lost.
    """
    go, make_subplots = _plotly()
    cmp_ = comparison(result, which)
    scale = map_scale(result) if scale is None else scale
    titles = [f"{name}: {getattr(cmp_, name).label_name} ({getattr(cmp_, name).confidence:.2f})"
              for name in ("clean", "attacked")]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.03)
    hover = patch_hover_data(cmp_, result.grid_size)
    for col, name in enumerate(("clean", "attacked"), start=1):
        _attention_panel(fig, result, which, name, 1, col, hover, scale)
    _square_axes(fig, 2)
    # The colour bar lies under the maps: beside them it would take width from the maps.
    fig.update_layout(
        **{**_PLOTLY_LAYOUT, "margin": dict(l=2, r=2, t=30, b=2)}, height=height,
        coloraxis=_coloraxis(scale, dict(title=dict(side="top"), orientation="h", thickness=10, len=0.9, y=-0.04,
                                         yanchor="top")),
        hoverlabel=dict(font_size=13), dragmode="zoom",
    )
    return fig


def plotly_compare(result: AnalysisResult) -> go.Figure:
    """Interactive version of :func:`compare_figure`: the four maps on one colour scale, square
    patches, hover with each patch's index, weight and rank on the clean and attacked image."""
    _, make_subplots = _plotly()
    k = result.config.explanation.k
    titles = []
    for name in ("clean", "attacked"):
        for which in MODEL_KEYS:
            view = getattr(comparison(result, which), name)
            titles.append(f"{model_label(result, which)}, {name}: {view.label_name} ({view.confidence:.2f})")
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.08)
    hovers = {which: patch_hover_data(comparison(result, which), result.grid_size) for which in MODEL_KEYS}
    scale = map_scale(result)
    for row, name in enumerate(("clean", "attacked"), start=1):
        for col, which in enumerate(MODEL_KEYS, start=1):
            _attention_panel(fig, result, which, name, row, col, hovers[which], scale)
    _square_axes(fig, 4)
    fig.update_layout(
        **_TITLED_SUBPLOTS, height=900, coloraxis=_coloraxis(scale, {}),
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
    """Interactive V_k vs k: vanilla, FViT, chance, the FViT's noise floor for every k (two
    independent clean estimates), and the FViT's CI and the floor's CI at the current k."""
    go, _ = _plotly()
    p = len(result.vanilla.overlap_curve)
    ks = np.arange(1, p + 1)
    k, d = result.config.explanation.k, result.faithful
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ks, y=chance_overlap(p), name="chance (k/P)", line=dict(color=COLORS["chance"], dash="dash")))
    for which in MODEL_KEYS:
        fig.add_trace(go.Scatter(x=ks, y=comparison(result, which).overlap_curve, name=model_label(result, which),
                                 line=dict(color=COLORS[which], width=2.5),
                                 hovertemplate="k = %{x}: Vₖ = %{y:.3f}<extra></extra>"))
    if d.overlap_curve_floor is not None:
        fig.add_trace(go.Scatter(x=ks, y=d.overlap_curve_floor, name="FViT noise floor (clean vs clean)",
                                 line=dict(color=COLORS["floor"], width=1.5, dash="dot"),
                                 hovertemplate="k = %{x}: floor Vₖ = %{y:.3f}<extra></extra>"))
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
        fig.add_trace(go.Scatter(x=[k + floor_offset(p)], y=[floor], mode="markers", name=f"noise floor at k = {k}" + (", 95% CI" if err else ""),
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
    data = sweep_columns(rows)
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
                       subtitle: str = "", images: tuple[np.ndarray, np.ndarray] | None = None) -> go.Figure:
    """Interactive per-layer, per-head attention; each layer scaled by its own maximum (the colour
    bar is the fraction of it; hover gives the weight itself). ``images``: the clean and the
    attacked input ((3, H, W) in [0, 1]) drawn under the tiles."""
    go, make_subplots = _plotly()
    maps = check_layer_maps(maps, grid_size)
    pictures = None
    if images is not None:
        if len(images) != 2 or any(np.ndim(image) != 3 or np.shape(image)[0] != 3 for image in images):
            raise ValueError("images must be the clean and the attacked image, each (3, H, W)")
        pictures = [np.round(to_hwc(image) * 255).astype(np.uint8) for image in images]
    _, layers, heads, _ = maps.shape
    titles = [f"L{layer + 1} {('clean', 'attacked')[i]} h{h + 1}" for layer in range(layers) for i in range(2)
              for h in range(heads)]
    fig = make_subplots(rows=layers, cols=2 * heads, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.03)
    for layer in range(layers):
        scale = float(maps[:, layer].max()) or 1.0
        for i in range(2):
            for h in range(heads):
                place, tile = dict(row=layer + 1, col=i * heads + h + 1), {}
                if pictures is not None:  # the image under the tile, the patch grid stretched over it
                    height, width = pictures[i].shape[:2]
                    ph, pw = height / grid_size[0], width / grid_size[1]
                    fig.add_trace(go.Image(z=pictures[i], hoverinfo="skip"), **place)
                    tile = dict(x0=(pw - 1) / 2, dx=pw, y0=(ph - 1) / 2, dy=ph, opacity=OVERLAY_ALPHA)
                fig.add_trace(go.Heatmap(z=attention_grid(maps[i, layer, h], grid_size) / scale, coloraxis="coloraxis",
                                         customdata=attention_grid(maps[i, layer, h], grid_size),
                                         hovertemplate=f"layer {layer + 1}, head {h + 1}, {('clean', 'attacked')[i]}"
                                                       "<br>weight %{customdata:.4f}<extra></extra>", **tile),
                              **place)
    _square_axes(fig, layers * 2 * heads)
    fig.update_annotations(font_size=9)
    fig.update_layout(**_TITLED_SUBPLOTS, height=110 * layers + 110,
                      coloraxis=dict(colorscale=inferno_scale(), cmin=0, cmax=1,
                                     colorbar=dict(title=dict(text="weight ÷ layer's largest", side="right"))),
                      title=f"{model} [CLS] attention per layer and head, clean vs attacked"
                            + (f"<br><sub>{subtitle}</sub>" if subtitle else ""))
    return fig


def plotly_on_photo(result: AnalysisResult, photo: np.ndarray, *, opacity: float = 0.5) -> go.Figure:
    """Interactive version of overlay.overlay_figure: both models' clean and attacked maps over the
    photo as it was given (2 x 2)."""
    from fvit_core.report.overlay import blend

    go, make_subplots = _plotly()
    scale = map_scale(result)
    panels = [(which, name) for name in ("clean", "attacked") for which in MODEL_KEYS]
    titles = [f"{model_label(result, which)}, {name}: {getattr(comparison(result, which), name).label_name}"
              for which, name in panels]
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, horizontal_spacing=0.03, vertical_spacing=0.08)
    for i, (which, name) in enumerate(panels):
        view = getattr(comparison(result, which), name)
        image = blend(photo, scale.values(view), result.grid_size, result.classifier_size, result.config.image_mode,
                      scale, opacity)
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=i // 2 + 1, col=i % 2 + 1)
    _square_axes(fig, 4)
    height, width = photo.shape[1:]
    fig.update_layout(**_TITLED_SUBPLOTS, height=800,
                      title=dict(text=f"On the photo ({width}×{height} px, {result.config.image_mode}; colour: "
                                      f"{scale.label}; opacity {opacity:g})<br><sub>{settings_text(result)}</sub>"))
    return fig
