"""Export of one analysis: figures to bytes (PNG/SVG/PDF/HTML), result and settings JSON,
metrics CSV, the figures of ``fvit analyze --out`` and the dashboard's zip bundle."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from fvit_core.protocol.limits import check_choice

from fvit_core.report.overlay import overlay_figure
from fvit_core.report.style import (
    FIGURE_FORMATS, MODEL_KEYS, SAVE_DPI, comparison, model_label, publication_style, settings_text
)
from fvit_core.report.static import (
    compare_figure, distributions_figure, divergence_figure, inputs_figure, layer_heads_figure,
    overlap_curve_figure, sigma_sweep_figure, votes_figure
)
from fvit_core.report.interactive import (
    plotly_compare, plotly_distributions, plotly_divergence, plotly_inputs, plotly_layer_heads, plotly_on_photo,
    plotly_overlap_curve, plotly_sigma_sweep, plotly_votes
)

if TYPE_CHECKING:  # plotly is imported lazily: the CLI's figures need only matplotlib
    from fvit_core.analysis.config import AnalysisConfig
    from fvit_core.analysis.result import AnalysisResult


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
    check_choice("format", fmt, _MIME)
    return _MIME[fmt]


def _check_format(fmt: str) -> str:
    check_choice("figure format", fmt, FIGURE_FORMATS)
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
    "noise_floor_ci_high", "kl", "js", "tv", "hellinger", "renyi", "renyi_alpha", "certified_class", "abstain_reason", "class_radius_l2",
    "topk_radius_l2", "topk_radius_linf", "prediction_bound", "perturbation_l2", "perturbation_linf",
    "attack", "method", "head_fusion", "target", "mode", "sigma", "n_samples", "n_samples_requested", "seed",
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
            "label_flip": cmp_.label_flip, "k": cfg.explanation.k, "topk_overlap": cmp_.topk_overlap,
            "topk_overlap_ci_low": ci[0] if ci else None, "topk_overlap_ci_high": ci[1] if ci else None,
            "noise_floor": d.topk_overlap_floor if fvit else None,
            "noise_floor_ci_low": floor_ci[0] if floor_ci else None,
            "noise_floor_ci_high": floor_ci[1] if floor_ci else None,
            **{name: cmp_.divergences[name] for name in ("kl", "js", "tv", "hellinger", "renyi")},
            "renyi_alpha": cfg.renyi_alpha,
            # An abstention certifies nothing: no radius (not 0), and the class column says so.
            "certified_class": (("abstain" if c.predicted_class < 0 else result.class_names[c.predicted_class])
                                if fvit else None),
            "abstain_reason": c.abstain_reason if fvit else None,
            "class_radius_l2": c.class_radius if fvit and c.predicted_class >= 0 else None,
            "topk_radius_l2": c.topk_radius_l2 if fvit else None,
            "topk_radius_linf": c.topk_radius_linf if fvit else None,
            "prediction_bound": c.prediction_bound if fvit else None,
            "perturbation_l2": result.attack["l2"], "perturbation_linf": result.attack["linf"],
            "attack": result.attack["name"], "method": cfg.explanation.method, "head_fusion": cfg.explanation.head_fusion,
            "target": result.explanation["target_name"] or "predicted",
            "mode": d.mode if fvit else None, "sigma": d.sigma, "n_samples": d.n_samples,
            "n_samples_requested": cfg.sampling.n_samples, "seed": cfg.seed,
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


def export_stem(result: AnalysisResult, image_name: str | None = None) -> str:
    """The start of every exported file's name: the image, the attack and its budget, the method,
    sigma and a short digest of the image and every setting, so exports of different analyses
    never collide ('cat_pgd-8-255_raw_sigma0.25_3f2a91c0'; an L2 budget reads 'cw-l2-0.5')."""
    import hashlib
    import re

    from ..attacks.specs import get_attack

    stem = Path(image_name or "image").stem or "image"
    budget = result.attack["params"].get("eps")
    if budget is None:
        attack = result.attack["name"]
    elif get_attack(result.attack["name"]).norm == "Linf":  # Linf budgets are read in 1/255 steps
        attack = f"{result.attack['name']}-{budget * 255:.3g}-255"
    else:
        attack = f"{result.attack['name']}-{budget:.3g}"
    digest = hashlib.sha256((result.image_digest + json.dumps(result.config.to_dict(), sort_keys=True, default=str)
                             ).encode()).hexdigest()[:8]
    text = f"{stem}_{attack}_{result.config.explanation.method}_sigma{result.config.smoothing.sigma:g}_{digest}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def layer_heads_builders(result: AnalysisResult, layer_maps: Mapping[str, np.ndarray]
                         ) -> list[tuple[str, str, Callable[[], Figure], Callable[[], Any]]]:
    """(file name, title, matplotlib builder, plotly builder) of the per-layer, per-head figure of
    each model in ``layer_maps`` ({"vanilla": maps, "fvit": maps}, (2, L, heads, P) each), over
    the clean and attacked inputs, with the analysis's settings in the title."""
    subtitle, images = settings_text(result), (result.clean_view, result.attacked_view)
    builders = []
    for which, maps in layer_maps.items():
        label = model_label(result, which)
        builders.append((
            f"layer_heads_{which}", f"Layers and heads: {label}",
            lambda m=maps, lab=label: layer_heads_figure(m, result.grid_size, model=lab, subtitle=subtitle, images=images),
            lambda m=maps, lab=label: plotly_layer_heads(m, result.grid_size, model=lab, subtitle=subtitle,
                                                         images=images)))
    return builders


def save_key_figures(result: AnalysisResult, out_dir: Path, formats: tuple[str, ...] = ("png",), *,
                     photo: np.ndarray | None = None) -> list[Path]:
    """Write every figure of :data:`RESULT_FIGURES` (compare, inputs, distributions, votes,
    divergence, overlap_curve) to ``out_dir`` as ``NAME.FORMAT``, and, with the ``photo`` as it
    was given ((3, H, W) in [0, 1]), the maps over it (``on_photo``); returns the paths written."""
    for fmt in formats:
        _check_format(fmt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    builders = [(spec.name, lambda s=spec: s.matplotlib(result)) for spec in RESULT_FIGURES.values()]
    if photo is not None:
        builders.append(("on_photo", lambda: overlay_figure(result, photo)))
    for name, build in builders:
        fig = build()
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            path.write_bytes(figure_to_bytes(fig, fmt))
            written.append(path)
    return written


def reproduce_command(image_name: str, settings_name: str = "settings.json") -> str:
    """The shell command that recomputes an exported analysis from its image and settings file."""
    return f"fvit analyze {image_name} --config {settings_name} --json result.json --out figures/"


def export_bundle(
    result: AnalysisResult,
    *,
    image_name: str | None = None,
    image_bytes: bytes | None = None,
    sweep_rows: Sequence[dict] | None = None,
    layer_maps: Mapping[str, np.ndarray] | None = None,
    photo: np.ndarray | None = None,
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
            sigma = result.config.smoothing.sigma
            builders.append(("sigma_sweep", lambda: sigma_sweep_figure(sweep_rows, sigma),
                             lambda: plotly_sigma_sweep(sweep_rows, sigma)))
            archive.writestr("sigma_sweep.csv", rows_to_csv(sweep_rows))
        builders += [(name, build, build_interactive)
                     for name, _, build, build_interactive in layer_heads_builders(result, layer_maps or {})]
        if photo is not None:
            builders.append(("on_photo", lambda: overlay_figure(result, photo),
                             lambda: plotly_on_photo(result, photo)))
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
