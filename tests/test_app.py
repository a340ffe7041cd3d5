"""The dashboard: its plain helpers (app/image_sources.py, model_sources.py, attack_widgets.py,
analysis_settings.py) and every page through streamlit's AppTest.

AppTest runs the real app on the shipped default pair; the settings that make it slow are turned
down through the app's own widgets (8 noise samples, 2 attack steps), as a user could.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import analysis_settings, attack_widgets, image_sources, metrics_table, model_sources  # noqa: E402
from fvit_core.runtime.cache import LRU  # noqa: E402
from fvit_core.attacks.specs import ATTACKS  # noqa: E402
from fvit_core.data.images import ImageError, fit_notice  # noqa: E402
from fvit_core.analysis.config import AnalysisConfig  # noqa: E402

APP = str(ROOT / "app" / "streamlit_app.py")
QUICK = {"n_samples": 8, "attack.pgd.steps": 2, "bootstrap": 50}
PAGES = ("views/compare.py", "views/distributions.py", "views/topk.py", "views/sigma.py", "views/layers.py",
         "views/export.py")


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def random_rgb(seed: int = 0, height: int = 40, width: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """The app reads these; tests start from the operator's defaults."""
    for name in ("FVIT_MODELS_DIR", "FVIT_SAMPLES_DIR", "FVIT_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ============================================================================================
# Plain helpers
# ============================================================================================


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "RGB"), ("WEBP", "RGB"),
                                      ("BMP", "RGB"), ("TIFF", "RGB"), ("GIF", "P")])
def test_load_upload_decodes_every_supported_format(fmt, mode):
    buffer = io.BytesIO()
    Image.fromarray(random_rgb()).convert(mode).save(buffer, format=fmt)
    data = buffer.getvalue()
    loaded = image_sources.load_upload(f"my file.{fmt.lower()}", data)
    assert loaded.pixels.shape == (3, 40, 48) and loaded.pixels.dtype == np.float32
    assert 0.0 <= loaded.pixels.min() and loaded.pixels.max() <= 1.0
    assert loaded.name == f"my_file.{fmt.lower()}" and loaded.data == data and loaded.source == "upload"


def test_load_upload_keeps_16_bit_grey_scale():
    grey = (np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    loaded = image_sources.load_upload("grey16.png", buffer.getvalue())
    assert loaded.pixels.shape == (3, 40, 48)
    assert loaded.pixels[0].max() == pytest.approx(grey.max() / 65535, abs=1e-6)


@pytest.mark.parametrize("data,message", [
    (b"", "empty file"),
    (b"this is not an image at all", "not a readable image"),
    (encode(random_rgb())[:80], "truncated|not a readable"),
])
def test_load_upload_rejects_bad_files_with_a_message(data, message):
    with pytest.raises(ImageError, match=message):
        image_sources.load_upload("bad.png", data)


def test_load_upload_rejects_huge_images_before_decoding():
    with pytest.raises(ImageError, match="over the limit"):
        image_sources.load_upload("big.png", encode(random_rgb(height=100, width=100)), max_pixels=5_000)
    with pytest.raises(ImageError, match="over the limit"):
        image_sources.load_upload("big.png", encode(random_rgb()), max_bytes=100)


def test_same_pixels_same_digest_other_pixels_other_digest():
    a, b = encode(random_rgb(0)), encode(random_rgb(1))
    assert image_sources.load_upload("a.png", a).digest == image_sources.load_upload("renamed.png", a).digest
    assert image_sources.load_upload("a.png", a).digest != image_sources.load_upload("b.png", b).digest


def test_gallery_lists_images_with_labels(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(random_rgb()))
    (tmp_path / "b.jpg").write_bytes(encode(random_rgb(), "JPEG"))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.json").write_text(json.dumps({"a.png": {"label": "cat"}, "b.jpg": "dog"}))
    items = image_sources.list_gallery(tmp_path)
    assert [(i.name, i.label) for i in items] == [("a.png", "cat"), ("b.jpg", "dog")]
    assert image_sources.list_gallery(tmp_path / "missing") == []


def test_generated_image_is_a_valid_fallback():
    image = image_sources.generated_image()
    assert image.pixels.shape == (3, 32, 32) and image.source == "generated"


def test_widgets_come_from_param_specs_in_display_units():
    pgd = ATTACKS["pgd"]
    eps = attack_widgets.widget_spec(pgd.param("eps"))
    assert (eps.kind, eps.value, eps.min, eps.max, eps.step, eps.scale) == ("slider", 8.0, 0.0, 64.0, 1.0, 255.0)
    assert "/255" in eps.label
    assert attack_widgets.widget_spec(pgd.param("steps")).kind == "number"
    assert attack_widgets.widget_spec(pgd.param("random_start")).kind == "checkbox"
    assert attack_widgets.widget_spec(ATTACKS["apgd"].param("loss")).options == ("ce", "dlr")
    assert attack_widgets.widget_spec(ATTACKS["cw"].param("c")).kind == "number"  # 1e-4 .. 1e4 is no slider


def test_attack_params_convert_back_to_pixels_and_link_to_the_analysis():
    settings = {"k": 5, "method": "rollout", "head_fusion": "max", "sigma": 0.5}
    pgd = attack_widgets.attack_params(ATTACKS["pgd"], {"eps": 16.0, "steps": 3, "random_start": False}, linked=True,
                              settings=settings)
    assert pgd == {"eps": 16 / 255, "alpha": 16 / 255 / 5, "steps": 3, "random_start": False}
    unlinked = attack_widgets.attack_params(ATTACKS["pgd"], {"eps": 16.0, "alpha": 2.0}, linked=False, settings=settings)
    assert unlinked["alpha"] == 2 / 255 and unlinked["steps"] == 10
    topk = attack_widgets.attack_params(ATTACKS["topk"], {"eps": 8.0}, linked=True, settings=settings)
    assert (topk["k"], topk["method"], topk["head_fusion"]) == (5, "rollout", "max")
    eot = attack_widgets.attack_params(ATTACKS["eot_dds"], {}, linked=True, settings=settings)
    assert eot["sigma"] == 0.5
    assert attack_widgets.linked_params(ATTACKS["fgsm"]) == []
    # The dashboard ties exactly what the registry derives, as the CLI does: L2 PGD keeps its own step.
    assert attack_widgets.linked_params(ATTACKS["pgdl2"]) == []
    l2 = attack_widgets.attack_params(ATTACKS["pgdl2"], {"eps": 1.0}, linked=True, settings=settings)
    assert l2["alpha"] == ATTACKS["pgdl2"].param("alpha").default
    from fvit_core.attacks.settings import AttackSettings

    cli_side = AttackSettings(name="pgd", eps=16 / 255, steps=3).resolve(settings).params
    assert cli_side["alpha"] == pgd["alpha"]


def test_build_config_gives_a_valid_reproducible_config():
    settings = {"sigma": 0.3, "k": 4, "n_samples": 16, "attack": "fgsm", "model_kind": "default"}
    models = model_sources.ModelChoice()
    config = analysis_settings.build_config(settings, {"eps": 4 / 255}, models)
    config.check_model(num_patches=64)
    assert (config.smoothing.sigma, config.explanation.k, config.attack.params) == (0.3, 4, {"eps": 4 / 255})
    assert AnalysisConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    other = analysis_settings.build_config({**settings, "sigma": 0.31}, {"eps": 4 / 255}, models)
    assert analysis_settings.settings_key("d", config) != analysis_settings.settings_key("d", other)
    assert analysis_settings.settings_key("d", config) == analysis_settings.settings_key("d", analysis_settings.build_config(settings, {"eps": 4 / 255}, models))


def test_expensive_settings_are_recognised():
    assert analysis_settings.expensive_reason(AnalysisConfig()) is None
    assert "samples" in analysis_settings.expensive_reason(AnalysisConfig.of(n_samples=256))
    assert "denoiser" in analysis_settings.expensive_reason(AnalysisConfig.of(attack="eot_dds"))
    assert "AutoAttack" in analysis_settings.expensive_reason(AnalysisConfig.of(attack="autoattack"))
    assert "steps" in analysis_settings.expensive_reason(AnalysisConfig.of(attack_params={"steps": 200}))
    assert "sensitivity (8 x 32" in analysis_settings.expensive_reason(AnalysisConfig.of(sensitivity_samples=8))


def test_local_models_only_from_the_models_directory(tiny_pair_dir, tmp_path):
    assert model_sources.local_model_folders("classifier", tiny_pair_dir) == ["classifier"]
    assert model_sources.local_model_folders("denoiser", tiny_pair_dir) == ["denoiser"]
    path = model_sources.resolve_local_model("classifier", "classifier", tiny_pair_dir)
    assert Path(path) == (tiny_pair_dir / "classifier").resolve()
    for name in ("../classifier", "/etc", "denoiser", str(tiny_pair_dir / "classifier")):
        with pytest.raises(ValueError, match="not a model name|not a classifier folder"):
            model_sources.resolve_local_model(name, "classifier", tiny_pair_dir)
    root = tmp_path / "models"
    root.mkdir()
    (root / "escape").symlink_to(tiny_pair_dir / "classifier")  # a link out of the directory is ignored
    assert model_sources.local_model_folders("classifier", root) == []


def test_hub_names_need_permission_and_are_never_paths(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="FVIT_ALLOW_DOWNLOAD=1"):
        model_sources.check_hub_name("vit_tiny_patch16_224", "classifier")
    monkeypatch.setenv("FVIT_ALLOW_DOWNLOAD", "1")
    assert not model_sources.downloads_allowed()  # HF_HUB_OFFLINE=1 still wins
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert model_sources.downloads_allowed()
    assert model_sources.check_hub_name(" google/ddpm-cifar10-32 ", "denoiser") == "google/ddpm-cifar10-32"
    with pytest.raises(ValueError, match="enter a classifier name"):
        model_sources.check_hub_name("  ", "classifier")
    for bad in ("/etc/passwd", "../models", "a/b/c", "~/x"):
        with pytest.raises(ValueError, match="not a hub id"):
            model_sources.check_hub_name(bad, "classifier")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    with pytest.raises(ValueError, match="local path"):
        model_sources.check_hub_name("local", "classifier")


CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_fit_notice_says_what_fitting_does_to_the_image():
    assert fit_notice((32, 32), (32, 32), "resize") is None
    assert fit_notice((128, 128), (32, 32), "resize") is None  # 4x: at the limit, no notice
    shrunk = fit_notice((512, 512), (32, 32), "resize")
    assert shrunk == ("This image is shrunk about 16× (512×512 → 32×32 px): the model sees far less detail "
                      "than the file has.")
    tall = fit_notice((40, 20), (32, 32), "center_crop")
    assert tall == "This image is 20×40, not square: centre crop cuts top and bottom off."
    assert "pad adds black bars left and right" in fit_notice((40, 20), (32, 32), "pad")
    assert "resize stretches it" in fit_notice((20, 40), (32, 32), "resize")
    assert fit_notice((32, 64), (16, 32), "resize") is None  # same 1:2 shape as a 1:2 model


def test_true_label_from_a_class_named_file():
    assert image_sources.label_from_name("cat_01.jpg", CIFAR10) == "cat"
    assert image_sources.label_from_name("My-Dog.PNG", CIFAR10) == "dog"
    assert image_sources.label_from_name("category.png", CIFAR10) is None  # not a whole word
    assert image_sources.label_from_name("cat_and_dog.png", CIFAR10) is None  # two classes: unknown
    assert image_sources.label_from_name("golden_retriever.jpg", ("golden retriever", "tabby")) == "golden retriever"
    info = model_sources.ModelInfo((32, 32), 64, CIFAR10, "the CIFAR-10 training split")
    assert "input 32×32 px (64 patches)" in info.describe("pair") and "10 classes only" in info.describe("pair")


def test_result_cache_keeps_the_most_recent():
    cache = LRU(2)
    cache.put("a", 1), cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2


# ============================================================================================
# AppTest: the pages
# ============================================================================================


def run_app(page: str | None = None, **settings):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180)
    for key, value in {**QUICK, **settings}.items():
        at.session_state[key] = value
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric_values(at, label: str) -> list[str]:
    return [m.value for m in at.metric if m.label == label]


def metric_deltas(at, label: str) -> list[str]:
    return [m.proto.delta for m in at.metric if m.label == label]


def current(at):
    return at.session_state["_current"]


def plotly_specs(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def plotly_values(value):
    """Numbers of a plotly JSON array: plotly >= 6 writes numpy arrays as {"dtype", "bdata"}."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value)


def captions(at) -> str:
    """Every caption on the page, including image captions."""
    return "\n".join([c.value for c in at.caption] + [text for image in at.image for text in image.captions])


@pytest.fixture(scope="module")
def default_app():
    """One default session (its first run loads the models and computes the first analysis)."""
    return run_app()


def test_default_load_shows_a_complete_comparison(default_app):
    at = default_app
    assert not at.error
    result = current(at).result
    assert metric_values(at, "Top-8 overlap V₈") == [f"{result.vanilla.topk_overlap:.2f}", f"{result.fvit.topk_overlap:.2f}"]
    assert metric_values(at, "Noise floor (clean vs clean)") == ["1.00", f"{result.faithful.topk_overlap_floor:.2f}"]
    assert metric_values(at, "Prediction (clean → attacked)")[0] == \
        f"{result.vanilla.clean.label_name} → {result.vanilla.attacked.label_name}"
    for label in ("Certified class radius (L2)", "Certified top-8 radius (L2)", "Confidence (clean → attacked)"):
        assert metric_values(at, label)
    assert "95% CI" in metric_deltas(at, "Top-8 overlap V₈")[1]
    text = captions(at)
    assert "As the model sees it: 32×32" in text and image_sources.DEFAULT_GALLERY_IMAGE in text
    assert "PGD (Linf): eps 8/255" in text and "N = 8 samples" in text and "σ = 0.25" in text
    assert len(at.image) >= 4  # preview, two attention figures, inputs row
    assert result.config.sampling.n_samples == 8 and result.config.attack.params["steps"] == 2
    (table,) = at.dataframe  # the metrics table: one row per metric, the FViT's floor beside it
    frame = table.value
    assert list(frame.columns) == list(metrics_table.COLUMNS) and len(frame) == 9
    assert frame["FViT"][1] == f"{result.fvit.map_metrics['spearman']:.3f}"
    assert frame["FViT noise floor"][0] == f"{result.faithful.topk_overlap_floor:.3f}"


@pytest.mark.parametrize("page", PAGES[1:])
def test_every_page_renders(default_app, page):
    at = default_app
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    result = current(at).result
    if page.endswith("distributions.py"):
        specs = plotly_specs(at)
        assert len(specs) == 3
        bars = [t for t in specs[0]["data"] if t["name"] == "Vanilla ViT, clean"][0]
        assert list(bars["y"]) == list(result.class_names)
        assert np.allclose(plotly_values(bars["x"]), result.vanilla.clean.probs)
    elif page.endswith("topk.py"):
        (spec,) = plotly_specs(at)
        assert spec["layout"]["shapes"][0]["x0"] == 8
        # The noise floor for every k, not only at the chosen one; at k it is the floor shown.
        floor = next(t for t in spec["data"] if t["name"] == "FViT noise floor (clean vs clean)")
        curve = plotly_values(floor["y"])
        assert len(curve) == len(result.vanilla.overlap_curve)
        assert curve[7] == pytest.approx(result.faithful.topk_overlap_floor)
    elif page.endswith("sigma.py"):
        assert at.button(key="run_sweep").label == "Run sweep"
    elif page.endswith("layers.py"):
        specs = plotly_specs(at)
        assert len(specs) == 2 and len(at.dataframe) == 2  # vanilla ViT and FViT, each with its colour bar
        assert [s["layout"]["title"]["text"].split(" [CLS]")[0] for s in specs] == ["Vanilla ViT", "Faithful ViT (DDS)"]
        assert all("colorbar" in s["layout"]["coloraxis"] for s in specs)
        # The image under every tile: one picture per tile (layers x heads x clean/attacked).
        tiles = [t for t in specs[0]["data"] if t["type"] == "heatmap"]
        assert len([t for t in specs[0]["data"] if t["type"] == "image"]) == len(tiles) > 0
    elif page.endswith("export.py"):
        keys = {b.key for b in at.get("download_button")}
        assert {"dl_png", "dl_svg", "dl_pdf", "dl_html", "dl_json", "dl_csv", "dl_settings", "dl_image"} <= keys
        assert any("fvit analyze cifar10" in c.value for c in at.code)
        at.button(key="build_zip").click().run()  # the ZIP is built on request, then kept for this analysis
        zip_button = next(b for b in at.get("download_button") if b.key == "dl_zip")
        assert zip_button.proto.label.startswith("Download the ZIP (")
    at.switch_page("views/compare.py").run()


def test_compare_shows_interactive_maps_on_one_colour_scale(default_app):
    at = default_app
    at.switch_page("views/compare.py").run()
    result = current(at).result
    specs = plotly_specs(at)
    assert len(specs) == 2  # vanilla ViT, FViT: clean and attacked maps each
    scale = {s["layout"]["coloraxis"]["cmax"] for s in specs}
    assert len(scale) == 1 and scale.pop() == pytest.approx(max(
        float(np.max(v.attention)) for c in (result.vanilla, result.fvit) for v in (c.clean, c.attacked)))
    for spec in specs:
        heatmaps = [t for t in spec["data"] if t["type"] == "heatmap"]
        assert len(heatmaps) == 2 and all("rank" in t["hovertemplate"] for t in heatmaps)
        assert spec["layout"]["yaxis"]["scaleanchor"] == "x" and spec["layout"]["yaxis2"]["scaleanchor"] == "x2"


def test_compare_shows_the_maps_on_the_photo_with_an_opacity_slider(default_app):
    at = default_app
    at.switch_page("views/compare.py").run()
    result = current(at).result
    on_photo = [image for image in at.image if any(", clean:" in c or ", attacked:" in c for c in image.captions)]
    assert len(on_photo) == 4
    assert at.slider(key="overlay_opacity").value == 0.5
    assert "patch map is resampled smoothly over the whole photo" in captions(at)
    before = [image.proto.imgs[0].url for image in on_photo]
    at.slider(key="overlay_opacity").set_value(0.9).run()
    assert not at.exception and current(at).result is result  # no new analysis: only the blend changes
    after = [image.proto.imgs[0].url for image in at.image
             if any(", clean:" in c or ", attacked:" in c for c in image.captions)]
    assert len(after) == 4 and after != before


def test_the_explained_class_can_be_chosen_and_is_named():
    at = run_app(method="gradcam", target=3)
    result = current(at).result
    assert result.config.explanation.target == 3 and result.explanation["target_name"] == "cat"
    assert "explains cat" in captions(at)
    assert at.selectbox(key="target").value == 3
    at.selectbox(key="target").set_value(None).run()
    assert current(at).result.config.explanation.target is None
    assert "explains the predicted class" in captions(at)


def test_without_an_attack_nothing_is_said_to_be_crafted():
    at = run_app(attack="none")
    text = captions(at)
    assert "No attack" in text and "crafted on" not in text


def test_the_attack_caption_is_its_first_whole_sentence():
    text = ("Expectation over transformation on DDS, Athalye et al. 2018 (e.g. for stochastic defences). "
            "Second sentence.")
    assert attack_widgets.first_sentence(text) == text.split(" Second")[0]
    assert attack_widgets.first_sentence("No stop here") == "No stop here"
    eot = ATTACKS["eot_dds"].description
    assert not attack_widgets.first_sentence(eot).endswith("et al.")


def test_an_abstention_says_why(default_app):
    import dataclasses

    from app import components

    result = current(default_app).result
    c = result.faithful.certified
    names = result.class_names
    top = result.fvit.clean.label
    other = (top + 1) % len(names)
    guessed_other = dataclasses.replace(result, faithful=dataclasses.replace(result.faithful, certified=dataclasses.replace(
        c, predicted_class=-1, class_radius=0.0, guess_class=other, abstain_reason="guess-not-top", p_a_lower=0.1)))
    text = components.abstain_text(guessed_other)
    assert f"guess, {names[other]}" in text and f"not the FViT's top class ({names[top]})" in text and "0.10" in text
    no_majority = dataclasses.replace(result, faithful=dataclasses.replace(result.faithful, certified=dataclasses.replace(
        c, predicted_class=-1, class_radius=0.0, guess_class=top, abstain_reason="no-majority", p_a_lower=0.41)))
    assert "no certified majority: p_A ≥ 0.41 < 1/2" in components.abstain_text(no_majority)


def test_sidebar_says_what_the_model_is_and_groups_the_settings(default_app):
    at = default_app
    text = "\n".join(c.value for c in at.sidebar.caption)
    assert "input 32×32 px" in text and "It knows 10 classes only: airplane, automobile" in text
    assert "CIFAR-10 training split" in text
    assert [t.label for t in at.sidebar.tabs] == ["Image", "FViT", "Explanation", "Attack"]
    assert "true class: **airplane**" in text  # the gallery's labels.json


def test_a_non_square_upload_gets_a_notice_and_pad_keeps_its_shape():
    at = run_app()
    at.file_uploader(key="upload").set_value(("dog_photo.png", encode(random_rgb(1, height=300, width=600)),
                                              "image/png")).run()
    assert not at.exception
    notices = " ".join(w.value for w in at.sidebar.warning)
    assert "600×300, not square: resize stretches it" in notices and "shrunk about 19×" in notices
    assert "true class: **dog**" in "\n".join(c.value for c in at.sidebar.caption)  # from the file name
    at.radio(key="image_mode").set_value("pad").run()
    assert current(at).result.config.image_mode == "pad"
    assert "pad adds black bars above and below" in " ".join(w.value for w in at.sidebar.warning)
    clean = current(at).result.clean_image
    assert clean[:, :7].max() < 0.02 and clean[:, -7:].max() < 0.02  # 8 of 32 rows are the bars


def test_changing_sigma_updates_numbers_and_charts():
    at = run_app(page="views/distributions.py")
    before = current(at).result
    at.slider(key="sigma").set_value(0.5).run()
    assert not at.exception and not at.error
    after = current(at).result
    assert after.config.smoothing.sigma == 0.5 and after.faithful.t_star > before.faithful.t_star
    # Same attacked image, so the bound alpha R^2 / (2 sigma^2) drops by (0.25 / 0.5)^2.
    assert after.attack["l2"] == pytest.approx(before.attack["l2"])
    c_before, c_after = before.faithful.certified, after.faithful.certified
    assert c_after.prediction_bound == pytest.approx(c_before.prediction_bound / 4)
    divergence = plotly_specs(at)[2]
    assert plotly_values(divergence["data"][0]["x"])[2] == pytest.approx(c_after.prediction_bound)
    assert "σ = 0.5" in captions(at)
    at.switch_page("views/compare.py").run()
    assert metric_values(at, "Certified top-8 radius (L2)") == [f"{c_after.topk_radius_l2:.4f}"]
    assert metric_deltas(at, "Divergence D₂ (Rényi, nats)")[1] == f"bound {c_after.prediction_bound:.3g}"


def test_changing_k_updates_labels_values_and_the_curve():
    at = run_app()
    at.slider(key="k").set_value(3).run()
    result = current(at).result
    assert result.config.explanation.k == 3
    assert metric_values(at, "Top-3 overlap V₃") == [f"{result.vanilla.topk_overlap:.2f}", f"{result.fvit.topk_overlap:.2f}"]
    assert result.vanilla.topk_overlap == pytest.approx(result.vanilla.overlap_curve[2])
    at.switch_page("views/topk.py").run()
    (spec,) = plotly_specs(at)
    assert spec["layout"]["shapes"][0]["x0"] == 3


def test_changing_the_attack_updates_the_comparison():
    at = run_app()
    at.selectbox(key="attack").set_value("none").run()
    assert not at.exception and not at.error
    assert metric_values(at, "Top-8 overlap V₈")[0] == "1.00"
    assert metric_deltas(at, "Prediction (clean → attacked)")[0] == "label kept"
    assert "No attack" in captions(at)
    at.session_state["attack.fgsm.eps"] = 4.0
    at.selectbox(key="attack").set_value("fgsm").run()
    result = current(at).result
    assert result.attack["name"] == "fgsm" and result.attack["linf"] == pytest.approx(4 / 255, abs=1e-6)
    assert "FGSM: eps 4/255" in captions(at)


def test_topk_attack_widgets_are_generated_and_linked():
    at = run_app(**{"attack.topk.steps": 2})
    at.selectbox(key="attack").set_value("topk").run()
    assert not at.exception and not at.error
    assert at.slider(key="attack.topk.eps").value == 8.0
    assert at.number_input(key="attack.topk.steps").value == 2
    assert at.checkbox(key="attack.topk.linked").value is True
    with pytest.raises(KeyError):
        at.number_input(key="attack.topk.k")  # linked: follows the analysis k
    params = current(at).result.attack["params"]
    assert params["k"] == 8 and params["alpha"] == pytest.approx(8 / 255 / 5)
    at.checkbox(key="attack.topk.linked").uncheck().run()
    assert at.number_input(key="attack.topk.k").value == 8 and at.slider(key="attack.topk.alpha").value == 1.6


def test_upload_is_analysed_and_a_bad_upload_keeps_the_last_result():
    at = run_app()
    gallery_key = current(at).key
    at.file_uploader(key="upload").set_value(("my photo.png", encode(random_rgb(3)), "image/png")).run()
    assert not at.exception and not at.error
    cur = current(at)
    assert cur.key != gallery_key and cur.image.name == "my_photo.png" and cur.image.source == "upload"
    assert "uploaded my_photo.png" in captions(at) and "from 48×40 px" in captions(at)
    good_key = cur.key
    for name, data in (("notes.png", b"definitely not an image"), ("cut.png", encode(random_rgb(4))[:100])):
        at.file_uploader(key="upload").set_value((name, data, "image/png")).run()
        assert not at.exception
        # The banner names the refused file and the image still shown, not "this image".
        assert len(at.error) == 1 and at.error[0].value.startswith(f"Cannot use {name}:")
        assert at.error[0].value.endswith("Still showing the last image that worked, my_photo.png.")
        assert current(at).key == good_key  # the last good analysis stays on screen
        assert metric_values(at, "Top-8 overlap V₈")
    at.file_uploader(key="upload").set_value(None).run()
    assert not at.error and current(at).key == gallery_key  # back to the gallery, from the cache


def test_expensive_settings_wait_for_a_click():
    at = run_app(**{"attack": "eot_dds", "attack.eot_dds.steps": 1, "attack.eot_dds.n_eot": 1})
    assert "_current" not in at.session_state
    assert any("wait for a click" in i.value for i in at.info)
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    result = current(at).result
    assert result.attack["crafted_on"] == "fvit" and result.attack["params"]["sigma"] == 0.25
    assert "crafted on the FViT (adaptive)" in captions(at)


def test_going_back_to_an_earlier_setting_reuses_its_result():
    at = run_app()
    first = current(at).result
    at.slider(key="sigma").set_value(0.3).run()
    assert current(at).result is not first
    at.slider(key="sigma").set_value(0.25).run()
    assert current(at).result is first  # from the session's result cache, not recomputed
    assert len(at.session_state["_results"]) == 2


def test_sigma_sweep_runs_on_click_and_marks_the_current_sigma():
    at = run_app(page="views/sigma.py", sweep_sigmas=[0.12])
    at.button(key="run_sweep").click().run()
    assert not at.exception and not at.error
    (spec,) = plotly_specs(at)
    fvit = next(t for t in spec["data"] if t.get("name") == "FViT Vₖ")
    assert list(plotly_values(fvit["x"])) == [0.12, 0.25]
    assert 0.25 in {s["x0"] for s in spec["layout"]["shapes"] if s["x0"] == s.get("x1")}
    assert len(at.dataframe[0].value) == 2
    at.switch_page("views/export.py").run()  # the sweep figure is now exportable
    assert "Sigma sweep" in at.selectbox(key="export_figure").options


def test_local_models_come_from_the_models_directory(tiny_pair_dir, monkeypatch):
    monkeypatch.setenv("FVIT_MODELS_DIR", str(tiny_pair_dir))
    at = run_app(model_kind="local")
    assert not at.error
    assert at.selectbox(key="local_classifier").options == ["classifier"]
    assert not at.text_input  # no free-text paths anywhere
    result = current(at).result
    assert result.grid_size == (4, 4) and at.slider(key="k").max == 16
    assert result.config.models.classifier == str((tiny_pair_dir / "classifier").resolve())
    assert "top-8 of 16 patches" in captions(at)


def test_hub_models_are_not_offered_without_permission():
    at = run_app()
    assert "hub" not in at.selectbox(key="model_kind").options
    assert any("FVIT_ALLOW_DOWNLOAD=1" in c.value for c in at.caption)


def test_a_broken_models_directory_gives_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FVIT_MODELS_DIR", str(tmp_path))
    at = run_app(model_kind="local")
    assert any("needs at least one classifier folder" in e.value for e in at.error)


def test_a_named_real_size_pair_is_offered_when_its_files_are_present(tmp_path, monkeypatch):
    """With imagenet-vit-b16's two folders in the models directory (small stand-ins here), the
    pair is selectable; on a CPU it states its cost, starts with the fewest samples and waits for
    a click; the run then works in the denoiser's pixel space, with progress and a Cancel button."""
    import torch
    from safetensors.torch import load_file

    from conftest import TINY_VIT_ARGS, make_tiny_vit
    from fvit_core.models.adm import convert_adm
    from fvit_core.models import save_classifier

    fixtures = ROOT / "tests" / "fixtures" / "adm"
    monkeypatch.setenv("FVIT_MODELS_DIR", str(tmp_path))
    offered = lambda at: any("imagenet-vit-b16" in option for option in at.selectbox(key="model_kind").options)  # noqa: E731
    assert not offered(run_app())
    save_classifier(make_tiny_vit(0), tmp_path / "imagenet-vit-b16", model_args=TINY_VIT_ARGS)
    torch.save({k: v.float() for k, v in load_file(str(fixtures / "small-conv_weights.safetensors")).items()},
               tmp_path / "adm.pt")
    convert_adm(tmp_path / "adm.pt", tmp_path / "imagenet-adm-256",
                flags=json.loads((fixtures / "small-conv_flags.json").read_text()))
    at = run_app()
    assert offered(at)
    at.selectbox(key="model_kind").set_value("pair:imagenet-vit-b16").run()
    assert at.session_state["n_samples"] == 4
    assert any("each DDS sample takes about" in c.value for c in at.caption)
    assert any("real-size models on a CPU" in i.value for i in at.info)
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    result = current(at).result
    assert result.config.models.pair == "imagenet-vit-b16" and result.pixel_size == (16, 16)
    assert result.classifier_size == (32, 32) and result.faithful.n_samples == 4


def test_metrics_table_rows(tiny_pair):
    from fvit_core.analysis.config import AnalysisConfig
    from fvit_core.analysis.pipeline import analyze

    image = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    cfg = AnalysisConfig.of(n_samples=4, steps=1, bootstrap=10, k=4, sensitivity_samples=2)
    result = analyze(image, cfg, pair=tiny_pair)
    rows = metrics_table.metrics_rows(result)
    assert [r["metric"] for r in rows][0] == "top-4 overlap V_4" and len(rows) == 9
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["SSIM on the patch grid"]["FViT noise floor"] == f"{result.faithful.map_metrics_floor['ssim']:.3f}"
    assert by_metric["max-sensitivity"]["vanilla ViT"] == f"{result.vanilla.sensitivity['max']:.3f}"
    assert by_metric["avg-sensitivity"]["FViT noise floor"] == f"{result.fvit.sensitivity['floor']:.3f}"


def test_error_messages_tell_user_errors_from_bugs():
    from fvit_core.errors import InputError, ModelLoadError, SettingError

    assert analysis_settings.error_message("Invalid settings", SettingError("k must be\n 1..64")) == "Invalid settings: k must be 1..64"
    assert analysis_settings.error_message("Models", ModelLoadError("no model folder 'x'")) == "Models: no model folder 'x'"
    assert analysis_settings.error_message("Cannot use this image", InputError("empty file")) == "Cannot use this image: empty file"
    bug = analysis_settings.error_message("The analysis failed", KeyError("secret internals"))
    assert bug == "The analysis failed: internal error, please report it (KeyError)." and "secret" not in bug
    assert "internal error" in analysis_settings.error_message("x", ValueError("plain"))  # an untyped ValueError is a bug
    assert analysis_settings.error_message("x", MemoryError()).startswith("x: out of memory")


def test_a_bug_in_the_engine_is_an_internal_error_without_traceback(monkeypatch):
    import app.session

    def broken(*args, **kwargs):
        raise KeyError("engine bug")

    monkeypatch.setattr(app.session, "analyze", broken)
    at = run_app()  # asserts no uncaught exception (no traceback on the page)
    texts = [e.value for e in at.error]
    assert texts == ["The analysis failed: internal error, please report it (KeyError)."], texts


def test_the_same_pixels_uploaded_under_a_new_name_export_the_new_file():
    """Issue 26: a re-upload of identical pixels reuses the result but exports name and carry
    the file now on screen (its name, its bytes), not the previous one."""
    pixels = random_rgb(5)
    at = run_app(page="views/export.py")
    at.file_uploader(key="upload").set_value(("first.png", encode(pixels), "image/png")).run()
    first = current(at)
    assert any("first.png" in c.value for c in at.code)
    second_bytes = encode(pixels, "BMP")  # the same pixels, another file
    at.file_uploader(key="upload").set_value(("second.bmp", second_bytes, "image/bmp")).run()
    assert not at.exception
    now = current(at)
    assert now.result is first.result  # nothing recomputed
    assert now.image.name == "second.bmp" and now.image.data == second_bytes
    assert any("second.bmp" in c.value for c in at.code) and not any("first.png" in c.value for c in at.code)
