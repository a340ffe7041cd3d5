"""Figures, exports, the sigma sweep and the layer explorer helpers (tiny pair: fast)."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
import matplotlib as mpl
from matplotlib.patches import Rectangle

from fvit_core.report import export, interactive, static, style
from fvit_core.analysis.explorer import layer_head_attention
from fvit_core.data.images import load_image
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.pipeline import analyze
from fvit_core.analysis.sweep import run_sweep, sweep_configs, sweep_row
from fvit_core.metrics import topk_indices

FAST = dict(n_samples=6, steps=2, bootstrap=20, k=4, batch_size=64)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plotly_values(value):
    """Numbers of a plotly JSON array: plotly >= 6 writes numpy arrays as {"dtype", "bdata"}."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        shape = value.get("shape", -1)
        if isinstance(shape, str):  # plotly writes an n-d shape as "2, 2, 5"
            shape = tuple(int(n) for n in shape.split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).reshape(shape)
    return np.asarray(value)


def _png_bytes(seed: int = 0, size: int = 32) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image():
    return load_image(_png_bytes())


@pytest.fixture(scope="module")
def result(image, tiny_pair):
    return analyze(image, AnalysisConfig.of(**FAST), pair=tiny_pair)


@pytest.fixture(scope="module")
def sweep_rows(image, tiny_pair):
    configs = sweep_configs(AnalysisConfig.of(**FAST), [0.5, 0.12])
    results = run_sweep(configs, lambda cfg, report: analyze(image, cfg, pair=tiny_pair, progress=report))
    return [sweep_row(r) for r in results]


@pytest.fixture(scope="module")
def layer_maps(result, tiny_pair):
    return layer_head_attention(tiny_pair, result.clean_image, result.attacked_image)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _check_encoded(data: bytes, fmt: str) -> None:
    if fmt == "png":
        assert data.startswith(PNG_MAGIC)
    elif fmt == "svg":
        assert ET.fromstring(data).tag.endswith("svg")
    else:
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")


@pytest.mark.parametrize("fmt", style.FIGURE_FORMATS)
def test_figure_to_bytes_is_valid_and_reproducible(result, fmt):
    first = export.figure_to_bytes(static.compare_figure(result), fmt)
    second = export.figure_to_bytes(static.compare_figure(result), fmt)
    _check_encoded(first, fmt)
    assert first == second  # no timestamps: the CLI and the dashboard give the same bytes


def test_figure_to_bytes_rejects_unknown_format(result):
    with pytest.raises(ValueError, match="png, svg, pdf"):
        export.figure_to_bytes(static.inputs_figure(result), "jpg")


def test_save_key_figures_writes_every_figure(result, tmp_path):
    paths = export.save_key_figures(result, tmp_path / "out", formats=("svg",))  # PDF: see the test above
    names = {p.name for p in paths}
    assert {"compare.svg", "distributions.svg", "overlap_curve.svg"} <= names
    assert len(paths) == len(export.RESULT_FIGURES)
    for path in paths:
        _check_encoded(path.read_bytes(), path.suffix[1:])


def test_save_key_figures_default_is_png(result, tmp_path):
    paths = export.save_key_figures(result, tmp_path)
    assert paths and all(p.suffix == ".png" and p.read_bytes().startswith(PNG_MAGIC) for p in paths)


# --------------------------------------------------------------------------------------------
# What the figures show
# --------------------------------------------------------------------------------------------


def _heatmaps(fig):
    return [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == style.ATTENTION_CMAP]


def test_compare_figure_uses_one_colour_scale_for_all_four_maps(result):
    fig = static.compare_figure(result)
    maps = _heatmaps(fig)
    assert len(maps) == 4
    top = max(float(getattr(getattr(result, w), n).attention.max()) for w in ("vanilla", "fvit") for n in ("clean", "attacked"))
    assert [im.get_clim() for im in maps] == [(0.0, pytest.approx(top))] * 4
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "Vanilla ViT" in titles and "Faithful ViT (DDS)" in titles and "noise floor" in titles


def test_compare_figure_outlines_k_patches_and_the_lost_ones(result):
    k = result.config.explanation.k
    fig = static.compare_figure(result)
    clean_ax, attacked_ax = fig.axes[0], fig.axes[2]  # the vanilla ViT's column: clean above, attacked below

    def boxes(ax, color):
        return [p for p in ax.patches if isinstance(p, Rectangle) and mpl.colors.same_color(p.get_edgecolor(), color)]

    assert len(boxes(clean_ax, style.TOPK_EDGE)) == k
    assert len(boxes(attacked_ax, style.TOPK_EDGE)) == k
    lost = round((1 - result.vanilla.topk_overlap) * k)
    assert len(boxes(attacked_ax, style.LOST_EDGE)) == lost
    assert result.vanilla.clean.label_name in clean_ax.get_xlabel()


def test_distributions_figure_labels_classes_and_units(result):
    fig = static.distributions_figure(result)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(result.class_names)
    assert ax.get_xlabel() == "probability"
    widths = [bar.get_width() for bar in ax.patches]
    assert np.allclose(widths[:10], result.vanilla.clean.probs)


def test_top_classes_picks_the_union_of_each_top_set():
    a, b = np.zeros(1000), np.zeros(1000)
    a[[5, 7]] = [0.6, 0.4]
    b[[7, 900]] = [0.3, 0.7]
    assert list(style.top_classes([a, b], 2)) == [900, 5, 7]
    assert list(style.top_classes([np.full(4, 0.25)], 10)) == [0, 1, 2, 3]


def test_format_param_shows_pixel_budgets_in_255ths():
    assert style.format_param(8 / 255, "/255") == "8/255"
    assert style.format_param(0.5, "") == "0.5"
    assert style.format_param(True, "") == "True"


# --------------------------------------------------------------------------------------------
# Plotly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(export.RESULT_FIGURES))
def test_plotly_figures_serialise_and_export_as_offline_html(result, name):
    fig = export.RESULT_FIGURES[name].plotly(result)
    assert json.loads(fig.to_json())["data"]
    html = export.plotly_to_html(fig).decode()
    assert html.lstrip().lower().startswith(("<html", "<!doctype html")) and "Plotly.newPlot" in html
    assert 'src="https://cdn.plot.ly' not in html  # plotly.js inlined: works without a network


def test_plotly_overlap_curve_carries_the_numbers(result):
    data = json.loads(interactive.plotly_overlap_curve(result).to_json())
    by_name = {trace.get("name"): trace for trace in data["data"]}
    assert np.allclose(plotly_values(by_name["Vanilla ViT"]["y"]), result.vanilla.overlap_curve)
    assert np.allclose(plotly_values(by_name["Faithful ViT (DDS)"]["y"]), result.fvit.overlap_curve)
    assert data["layout"]["shapes"][0]["x0"] == result.config.explanation.k


def test_plotly_compare_shares_the_colour_axis(result):
    data = json.loads(interactive.plotly_compare(result).to_json())
    heatmaps = [t for t in data["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 4 and {t["coloraxis"] for t in heatmaps} == {"coloraxis"}
    scale = style.map_scale(result)  # raw attention: linear from 0 to the largest weight of the four maps
    largest = max(float(np.max(getattr(style.comparison(result, w), n).attention)) for w in style.MODEL_KEYS
                  for n in ("clean", "attacked"))
    assert data["layout"]["coloraxis"]["cmin"] == 0 and data["layout"]["coloraxis"]["cmax"] == pytest.approx(largest)
    assert scale.vmax == pytest.approx(largest) and scale.label == "attention weight (share of the patches)"
    # Square pixels in every panel: each y axis anchored to its own x axis (the HTML export
    # stretched three of four panels when all were anchored to the first).
    for i, suffix in enumerate(("", "2", "3", "4"), start=1):
        assert data["layout"][f"yaxis{suffix}"]["scaleanchor"] == f"x{suffix}"
    assert style.settings_text(result) in data["layout"]["title"]["text"]


def test_patch_ranks_order_by_weight_with_ties_in_patch_order():
    ranks = interactive.patch_ranks(np.array([0.1, 0.5, 0.2, 0.5]))
    assert list(ranks) == [4, 1, 3, 2]


def test_plotly_attention_maps_hover_gives_index_weight_and_rank(result):
    vmax = style.map_scale(result).vmax
    data = json.loads(interactive.plotly_attention_maps(result, "fvit", scale=style.map_scale(result)).to_json())
    heatmaps = [t for t in data["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 2 and data["layout"]["coloraxis"]["cmax"] == pytest.approx(vmax)
    assert "rank" in heatmaps[0]["hovertemplate"] and "weight" in heatmaps[0]["hovertemplate"]
    hover = plotly_values(heatmaps[1]["customdata"]).reshape(*result.grid_size, 5)
    clean, attacked = result.fvit.clean.attention, result.fvit.attacked.attention
    top = int(np.argmax(attacked))
    r, c = divmod(top, result.grid_size[1])
    assert hover[r, c, 0] == top and hover[r, c, 3] == pytest.approx(attacked[top]) and hover[r, c, 4] == 1
    assert hover[r, c, 1] == pytest.approx(clean[top])
    assert hover[r, c, 2] == 1 + int(np.sum(clean > clean[top]))  # its rank on the clean map
    # Top-k outlined on both maps: one line trace per map, a closed box of 5 corners around each
    # top-k patch, drawn over its own panel.
    k, (rows, cols) = result.config.explanation.k, result.grid_size
    outlines = [t for t in data["data"] if t["type"] == "scatter" and t["line"]["color"] == style.TOPK_EDGE]
    assert [t.get("xaxis", "x") for t in outlines] == ["x", "x2"] and all(t["hoverinfo"] == "skip" for t in outlines)
    height, width = result.clean_view.shape[1:]
    for trace, view in zip(outlines, (result.fvit.clean, result.fvit.attacked)):
        xs, ys = plotly_values(trace["x"]), plotly_values(trace["y"])
        boxes = [(xs[i:i + 5], ys[i:i + 5]) for i in range(0, len(xs), 6)]
        assert len(boxes) == k and all(x is None for x in xs[5::6])
        for (bx, by), index in zip(boxes, topk_indices(view.attention, k)):
            r, c = divmod(int(index), cols)
            assert min(bx) == pytest.approx(c * width / cols - 0.5) and max(by) == pytest.approx((r + 1) * height / rows - 0.5)
            assert bx[0] == bx[4] and by[0] == by[4]  # closed
    lost = [t for t in data["data"] if t["type"] == "scatter" and t["line"]["color"] == style.LOST_EDGE]
    assert len(lost) == 1 and lost[0]["line"]["dash"] == "dot" and lost[0].get("xaxis") == "x2"
    assert data["layout"]["yaxis2"]["scaleanchor"] == "x2"


def test_every_figure_names_method_sigma_n_and_k(result):
    text = style.settings_text(result)
    assert all(part in text for part in ("raw attention", "σ = 0.25", "N = 6", "top-4"))
    for spec in export.RESULT_FIGURES.values():
        fig = spec.matplotlib(result)
        texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        texts += [ax.get_title() for ax in fig.axes]
        assert any(text in t for t in texts), spec.name
        title = json.loads(spec.plotly(result).to_json())["layout"]["title"]["text"]
        assert text in title, spec.name


# --------------------------------------------------------------------------------------------
# Data exports
# --------------------------------------------------------------------------------------------


def test_result_json_and_metrics_csv(result):
    assert json.loads(export.result_json(result)) == json.loads(result.dumps())
    rows = list(csv.DictReader(io.StringIO(export.metrics_csv(result).decode())))
    assert [r["model"] for r in rows] == ["vanilla", "fvit"]
    assert float(rows[0]["topk_overlap"]) == result.vanilla.topk_overlap
    assert float(rows[1]["noise_floor"]) == result.faithful.topk_overlap_floor
    assert rows[0]["noise_floor"] == "" and float(rows[1]["sigma"]) == result.config.smoothing.sigma
    for row in rows:  # every row names the settings it was measured with
        assert row["method"] == result.config.explanation.method and row["head_fusion"] == result.config.explanation.head_fusion
        assert float(row["sigma"]) == result.config.smoothing.sigma and int(row["k"]) == result.config.explanation.k
        assert int(row["n_samples"]) == result.faithful.n_samples and int(row["n_samples_requested"]) == result.config.sampling.n_samples
    assert rows[0]["mode"] == "" and rows[1]["mode"] == result.faithful.mode
    assert float(rows[1]["topk_radius_l2"]) == result.faithful.certified.topk_radius_l2


def test_settings_json_reproduces_the_analysis_through_the_cli(tiny_pair_dir, tmp_path, capsys):
    from fvit_core.cli.main import main

    image_file = tmp_path / "input.png"
    image_file.write_bytes(_png_bytes(seed=5))
    config = AnalysisConfig.of(classifier=str(tiny_pair_dir / "classifier"), denoiser=str(tiny_pair_dir / "denoiser"),
                            attack="fgsm", attack_params={"eps": 4 / 255}, **{k: v for k, v in FAST.items() if k != "steps"})
    pair = config.models.load()
    expected = analyze(load_image(image_file), config, pair=pair).to_json()
    settings = tmp_path / "settings.json"
    settings.write_bytes(export.settings_json(config))
    assert AnalysisConfig.from_file(settings) == config
    assert main(["analyze", str(image_file), "--config", str(settings), "--json", str(tmp_path / "r.json"),
                 "--out", str(tmp_path / "figs")]) == 0
    reproduced = json.loads((tmp_path / "r.json").read_text())
    expected.pop("timing"), reproduced.pop("timing")
    assert reproduced == json.loads(json.dumps(expected))
    assert (tmp_path / "figs" / "compare.png").read_bytes().startswith(PNG_MAGIC)


def test_export_bundle_holds_everything(result, sweep_rows, layer_maps, image):
    data = export.export_bundle(result, image_name="cat.png", image_bytes=b"PNG", sweep_rows=sweep_rows,
                                 layer_maps={"vanilla": layer_maps, "fvit": layer_maps[::-1]}, photo=image,
                                 formats=("svg",))
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = set(archive.namelist())
    # Both models' layer figures and the maps on the photo (the review found only the vanilla one).
    assert {"result.json", "metrics.csv", "settings.json", "cat.png", "README.txt", "sigma_sweep.csv",
            "figures/compare.svg", "figures/sigma_sweep.svg", "figures/layer_heads_vanilla.svg",
            "figures/layer_heads_fvit.svg", "figures/on_photo.svg", "interactive/compare.html",
            "interactive/layer_heads_fvit.html", "interactive/on_photo.html", "interactive/plotly.min.js"} <= names
    assert 'src="plotly.min.js"' in archive.read("interactive/compare.html").decode()
    readme = zipfile.ZipFile(io.BytesIO(data)).read("README.txt").decode()
    assert "fvit analyze cat.png --config settings.json" in readme


# --------------------------------------------------------------------------------------------
# Sigma sweep
# --------------------------------------------------------------------------------------------


def test_sigma_sweep_rows_share_one_attack_and_follow_sigma(image, tiny_pair, sweep_rows):
    assert [r["sigma"] for r in sweep_rows] == [0.12, 0.5]
    assert sweep_rows[0]["perturbation_l2"] == sweep_rows[1]["perturbation_l2"]  # same attacked image
    assert sweep_rows[0]["vanilla_overlap"] == sweep_rows[1]["vanilla_overlap"]
    direct = analyze(image, AnalysisConfig.of(**{**FAST, "sigma": 0.5}), pair=tiny_pair)
    assert sweep_rows[1] == sweep_row(direct)
    assert sweep_rows[0]["t_star"] < sweep_rows[1]["t_star"]
    json.dumps(sweep_rows, allow_nan=False)  # plain values only


def test_sweep_configs_pin_the_adaptive_attack_to_one_sigma():
    configs = sweep_configs(AnalysisConfig.of(attack="eot_dds", sigma=0.25), [0.5, 0.12, 0.5])
    assert [c.smoothing.sigma for c in configs] == [0.12, 0.5]
    assert all(c.attack.params["sigma"] == 0.25 for c in configs)
    with pytest.raises(ValueError, match="positive"):
        sweep_configs(AnalysisConfig(), [0.0])


def test_sigma_sweep_figures_mark_the_current_sigma(sweep_rows):
    fig = static.sigma_sweep_figure(sweep_rows, current_sigma=0.12)
    assert len(fig.axes) == 3 and fig.axes[2].get_xscale() == "log"
    assert any(np.allclose(line.get_xdata(), [0.12, 0.12]) for line in fig.axes[0].get_lines())
    data = json.loads(interactive.plotly_sigma_sweep(sweep_rows, current_sigma=0.12).to_json())
    assert {s["x0"] for s in data["layout"]["shapes"] if s.get("type") == "line" and s["x0"] == s["x1"]} == {0.12}
    fvit = next(t for t in data["data"] if t.get("name") == "FViT Vₖ")
    assert np.allclose(plotly_values(fvit["y"]), [r["fvit_overlap"] for r in sweep_rows])


# --------------------------------------------------------------------------------------------
# Layers and heads
# --------------------------------------------------------------------------------------------


def test_layer_head_attention_shape_and_raw_explanation(result, layer_maps):
    assert layer_maps.shape == (2, 2, 2, 16)  # (clean/attacked, layers, heads, patches) of the tiny ViT
    raw = layer_maps[0, -1].mean(0)
    assert np.allclose(raw / raw.sum(), result.vanilla.clean.attention, atol=1e-5)


def test_layer_head_overlap_and_figure(layer_maps):
    same = np.stack([layer_maps[0], layer_maps[0]])
    assert np.all(static.layer_head_overlap(same, 4) == 1.0)
    overlap = static.layer_head_overlap(layer_maps, 4)
    assert overlap.shape == (2, 2) and np.all((0 <= overlap) & (overlap <= 1))
    fig = static.layer_heads_figure(layer_maps, (4, 4), model="Faithful ViT (DDS)", subtitle="raw attention · N = 6")
    assert len(fig.axes) == 2 * 2 * 2 + 1  # the maps and one colour bar
    assert fig.axes[-1].get_xlabel() == "weight ÷ the row's largest weight"  # a horizontal bar
    assert fig._suptitle.get_text().startswith("Faithful ViT (DDS)") and "N = 6" in fig._suptitle.get_text()
    data = json.loads(interactive.plotly_layer_heads(layer_maps, (4, 4)).to_json())
    assert data["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "weight ÷ layer's largest"
    with pytest.raises(ValueError, match="2, layers, heads"):
        static.layer_heads_figure(layer_maps[:1], (4, 4))


def test_smoothed_layer_maps_average_the_denoised_samples(result, tiny_pair):
    """The FViT's per-layer maps: seeded, shaped like the vanilla ones, and with the same mean
    over N draws as the maps of the individual denoised draws (computed here by hand)."""
    import torch

    from fvit_core.explanations.attention import layer_head_maps
    from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma
    from fvit_core.analysis.explorer import smoothed_layer_head_attention

    args = dict(mode="dds", sigma=0.25, n_samples=5, seed=3)
    maps = smoothed_layer_head_attention(tiny_pair, result.clean_image, result.attacked_image, batch_size=2, **args)
    assert maps.shape == (2, 2, 2, 16)
    np.testing.assert_allclose(maps, smoothed_layer_head_attention(tiny_pair, result.clean_image,
                                                                   result.attacked_image, **args), atol=1e-6)
    generator = torch.Generator().manual_seed(3)
    x = torch.from_numpy(result.clean_image)[None]
    noisy = x + torch.randn((5, *x.shape[1:]), generator=generator) * 0.25
    t_star = timestep_for_sigma(tiny_pair.denoiser.alphas_cumprod, 0.25)
    with torch.inference_mode():
        expected = layer_head_maps(tiny_pair.classifier, one_shot_denoise(tiny_pair.denoiser, noisy, t_star)).mean(0)
    np.testing.assert_allclose(maps[0], expected.double().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        smoothed_layer_head_attention(tiny_pair, result.clean_image, result.attacked_image, mode="dds", sigma=0.0,
                                      n_samples=4, seed=0)


# --------------------------------------------------------------------------------------------
# Layout: nothing cut off, no legend over the data
# --------------------------------------------------------------------------------------------


def _display_boxes(fig):
    """Drawn at the export resolution: (figure box, [(text, box)], [(axes, legend box)])."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    with style.publication_style():
        FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and t.figure is not None]
    legends = [legend.get_window_extent(renderer) for legend in fig.findobj(Legend)]
    return fig.bbox, texts, legends


def _data_boxes(fig):
    """Display-space boxes of every drawn data mark: line vertices, bars, filled bands."""
    from matplotlib.collections import PolyCollection
    from matplotlib.transforms import Bbox

    boxes = []
    for ax in fig.axes:
        for line in ax.get_lines():
            xy = line.get_xydata()
            if line.get_transform().is_affine is False or len(xy) < 1:
                continue
            points = line.get_transform().transform(xy)
            boxes += [Bbox([p - 0.5, p + 0.5]) for p in points[np.isfinite(points).all(axis=1)]]
        boxes += [bar.get_window_extent() for bar in ax.patches if isinstance(bar, Rectangle) and bar.get_width() > 0
                  and bar.get_height() > 0 and bar.get_visible() and bar.get_fill()]
        boxes += [c.get_window_extent() for c in ax.collections if isinstance(c, PolyCollection)]
    return boxes


@pytest.fixture(scope="module")
def long_result(image, tiny_pair):
    """The longest settings line a figure states: a class-dependent method with a chosen class."""
    return analyze(image, AnalysisConfig.of(**FAST, method="transformer_attribution", target=3), pair=tiny_pair)


@pytest.mark.parametrize("name", [*export.RESULT_FIGURES, "sigma_sweep", "layer_heads", "on_photo"])
@pytest.mark.parametrize("which", ["result", "long_result"])
def test_no_text_is_cut_off_and_no_legend_covers_data(name, which, request, image, sweep_rows, layer_maps):
    """The export review found a title running off divergence.png, labels over the data in
    sigma_sweep.png and a legend over the bars of distributions.png: every text of every figure
    lies inside it, and no legend box covers a line vertex, a bar or a band."""
    result = request.getfixturevalue(which)
    if name == "sigma_sweep":
        fig = static.sigma_sweep_figure(sweep_rows, current_sigma=0.12)
    elif name == "layer_heads":
        (_, _, fig_builder, _), = export.layer_heads_builders(result, {"vanilla": layer_maps})
        fig = fig_builder()
    elif name == "on_photo":
        fig = export.overlay_figure(result, image)
    else:
        fig = export.RESULT_FIGURES[name].matplotlib(result)
    frame, texts, legends = _display_boxes(fig)
    # What is drawn (fig.get_tightbbox: ticks outside the axis limits are not) lies in the figure.
    drawn = fig.get_tightbbox(fig.canvas.get_renderer()).transformed(fig.dpi_scale_trans)
    outside = [text for text, box in texts if not (box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1
                                                  and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1)]
    assert (drawn.x0 >= frame.x0 - 1 and drawn.x1 <= frame.x1 + 1 and drawn.y0 >= frame.y0 - 1
            and drawn.y1 <= frame.y1 + 1), f"{name}: drawn {drawn} runs off {frame}; texts outside: {outside}"
    marks = _data_boxes(fig)
    for legend in legends:
        covered = [box for box in marks if legend.overlaps(box)]
        assert not covered, f"{name}: the legend at {legend} covers {len(covered)} data marks"


# --------------------------------------------------------------------------------------------
# Colour scales per method family; names of the exports; abstentions in metrics.csv
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lrp_result(image, tiny_pair):
    return analyze(image, AnalysisConfig.of(**FAST, method="lrp"), pair=tiny_pair)


def test_signed_relevance_gets_a_diverging_scale_centred_on_zero(lrp_result):
    """LRP's relevances are signed: a diverging map, symmetric about 0, its own colour-bar label,
    the signed values drawn (not the clipped non-negative weights)."""
    scale = style.map_scale(lrp_result)
    assert scale.signed and scale.cmap == style.SIGNED_CMAP and scale.vmin == -scale.vmax > -np.inf
    assert scale.label.startswith("signed relevance")
    view = lrp_result.vanilla.clean
    assert view.relevance is not None and (view.relevance < 0).any()
    np.testing.assert_array_equal(scale.values(view), view.relevance)
    assert np.abs(view.relevance).sum() == pytest.approx(1.0, rel=1e-5)
    magnitudes = np.abs(np.concatenate([getattr(style.comparison(lrp_result, w), n).relevance
                                        for w in style.MODEL_KEYS for n in ("clean", "attacked")]))
    assert scale.vmax == pytest.approx(np.percentile(magnitudes, style.RELEVANCE_PERCENTILE))
    fig = static.compare_figure(lrp_result)
    heat = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == style.SIGNED_CMAP]
    assert len(heat) == 4 and all(im.get_clim() == (scale.vmin, scale.vmax) for im in heat)
    assert fig.axes[-1].get_ylabel() == scale.label
    data = json.loads(interactive.plotly_compare(lrp_result).to_json())
    assert data["layout"]["coloraxis"]["cmin"] == pytest.approx(-scale.vmax)
    assert data["layout"]["coloraxis"]["colorbar"]["title"]["text"] == scale.label
    assert json.loads(lrp_result.dumps())["vanilla"]["clean"]["relevance"] == pytest.approx(view.relevance.tolist())


def test_unsigned_relevance_saturates_its_top_percent_and_attention_does_not(image, tiny_pair, result):
    """One patch of a Transformer Attribution map can hold most of the relevance: its scale stops
    at the 98th percentile (Captum's outlier_perc=2) instead of letting one patch wash out the
    rest; raw attention keeps the linear scale to its largest weight."""
    ta = analyze(image, AnalysisConfig.of(**FAST, method="transformer_attribution"), pair=tiny_pair)
    scale = style.map_scale(ta)
    weights = np.concatenate([getattr(style.comparison(ta, w), n).attention for w in style.MODEL_KEYS
                              for n in ("clean", "attacked")])
    assert not scale.signed and scale.vmin == 0.0
    assert scale.vmax == pytest.approx(np.percentile(weights, style.RELEVANCE_PERCENTILE)) and scale.vmax < weights.max()
    assert scale.label.startswith("relevance") and "attention weight" not in scale.label
    assert style.map_scale(result).label == "attention weight (share of the patches)"


def test_export_names_say_what_was_exported_and_never_collide(result, image, tiny_pair):
    stem = export.export_stem(result, "my cat.jpg")
    assert stem.startswith("my_cat_pgd-") and "_raw_sigma0.25_" in stem
    other = analyze(image, AnalysisConfig.of(**FAST, sigma=0.5), pair=tiny_pair)
    assert export.export_stem(other, "my cat.jpg") != stem
    assert export.export_stem(result, "my cat.jpg") == stem  # same analysis, same name
    l2 = analyze(image, AnalysisConfig.of(**{**FAST, "steps": 1}, attack="pgdl2", eps=0.5), pair=tiny_pair)
    assert "_pgdl2-0.5_" in export.export_stem(l2, "x.png")  # an L2 budget is not read in /255


def test_an_abstention_is_not_a_zero_radius_in_metrics_csv(result):
    import dataclasses

    c = result.faithful.certified
    abstained = dataclasses.replace(result, faithful=dataclasses.replace(result.faithful, certified=dataclasses.replace(
        c, predicted_class=-1, class_radius=0.0, abstain_reason="no-majority")))
    rows = list(csv.DictReader(io.StringIO(export.metrics_csv(abstained).decode())))
    fvit = rows[1]
    assert fvit["certified_class"] == "abstain" and fvit["class_radius_l2"] == ""
    assert fvit["abstain_reason"] == "no-majority"
    certified = dataclasses.replace(result, faithful=dataclasses.replace(result.faithful, certified=dataclasses.replace(
        c, predicted_class=2, class_radius=0.31, abstain_reason=None)))
    fvit = list(csv.DictReader(io.StringIO(export.metrics_csv(certified).decode())))[1]
    assert fvit["certified_class"] == result.class_names[2] and float(fvit["class_radius_l2"]) == 0.31
    assert fvit["abstain_reason"] == ""


def test_the_floor_curve_is_the_floor_at_every_k(result):
    """The Top-k page's floor for every k: at the chosen k it is the floor the cards show (the
    same bootstrap draws), and the static figure draws the same curve."""
    d, k = result.faithful, result.config.explanation.k
    assert d.overlap_curve_floor is not None and len(d.overlap_curve_floor) == len(result.vanilla.overlap_curve)
    assert d.overlap_curve_floor[k - 1] == pytest.approx(d.topk_overlap_floor, abs=1e-12)
    assert d.overlap_curve_floor[-1] == pytest.approx(1.0)  # k = P: every patch is in both sets
    data = json.loads(interactive.plotly_overlap_curve(result).to_json())
    floor = next(t for t in data["data"] if t["name"] == "FViT noise floor (clean vs clean)")
    np.testing.assert_allclose(plotly_values(floor["y"]), d.overlap_curve_floor)
    fig = static.overlap_curve_figure(result)
    drawn = next(line for line in fig.axes[0].get_lines() if line.get_label() == "FViT noise floor (clean vs clean)")
    np.testing.assert_allclose(drawn.get_ydata(), d.overlap_curve_floor)


def test_layer_tiles_lie_over_the_image(result, layer_maps):
    images = (result.clean_view, result.attacked_view)
    fig = static.layer_heads_figure(layer_maps, result.grid_size, images=images)
    tiles = fig.axes[0].get_images()
    assert len(tiles) == 2 and tiles[1].get_alpha() == style.OVERLAY_ALPHA
    np.testing.assert_allclose(tiles[0].get_array(), style.to_hwc(result.clean_view))
    data = json.loads(interactive.plotly_layer_heads(layer_maps, result.grid_size, images=images).to_json())
    assert [t["type"] for t in data["data"][:2]] == ["image", "heatmap"] and data["data"][1]["opacity"] == style.OVERLAY_ALPHA
    with pytest.raises(ValueError, match="clean and the attacked image"):
        static.layer_heads_figure(layer_maps, result.grid_size, images=(result.clean_view,))
