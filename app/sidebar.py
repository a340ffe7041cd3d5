"""The sidebar: every control of the analysis, returned as plain values (:class:`SidebarValues`).

Widgets have explicit keys; their defaults are written into ``st.session_state`` once (never
passed as ``value=`` as well), so tests and the URL can set them before the first run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st

from app import analysis_settings, attack_widgets, image_sources, model_sources
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.noise_floor import NOISE_FLOOR_ESTIMATORS
from fvit_core.attacks.specs import ATTACKS
from fvit_core.data.images import PREPARE_MODES, ImageError, fit_notice, prepare_image, to_uint8
from fvit_core.errors import ModelLoadError
from fvit_core.explanations.settings import CLASS_METHODS, EXPLANATION_METHODS, HEAD_FUSIONS
from fvit_core.method.settings import SAMPLING_SCHEMES, SMOOTHING_MODES
from fvit_core.models import MODEL_PAIRS, models_dir
from fvit_core.runtime.precision import PRECISION_CHOICES

# The settings the sidebar has widgets for (keys double as flat setting names), at the engine's
# defaults; "model_kind" is the sidebar's own (which model source).
_WIDGET_SETTINGS: tuple[str, ...] = (
    "image_mode", "attack", "method", "head_fusion", "target", "mode", "sigma", "n_samples", "sampling", "k", "beta",
    "seed", "shared_noise",
    "noise_floor", "bootstrap", "renyi_alpha", "confidence_alpha", "precision", "noise_floor_estimator", "early_stop",
    "sensitivity_samples")
_DEFAULTS = AnalysisConfig().to_dict()
SETTING_DEFAULTS: dict[str, Any] = {"model_kind": "default", **{name: _DEFAULTS[name] for name in _WIDGET_SETTINGS}}
# The pages' own widgets (not settings of the analysis), kept like the sidebar's.
VIEW_DEFAULTS: dict[str, Any] = {"overlay_opacity": 0.5}
SAMPLE_CHOICES: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
METHOD_LABELS = {"raw": "raw attention (last block)", "rollout": "attention rollout",
                 "grad_rollout": "gradient-weighted rollout", "gradcam": "attention GradCAM",
                 "transformer_attribution": "Transformer Attribution (LRP x grad)", "lrp": "full LRP",
                 "partial_lrp": "partial LRP (last block)", "attr_rollout": "Attribution Rollout (Xu et al.)"}
MODE_LABELS = {"dds": "DDS: noise + one-shot denoise", "rs": "RS: noise, no denoiser",
               "denoise-only": "denoise only (no noise)", "multistep": "DDS, multi-step denoise"}
PRECISION_LABELS = {"auto": "auto (bfloat16 where native)", "float32": "float32", "bfloat16": "bfloat16"}
SAMPLING_LABELS = {"independent": "independent", "antithetic": "antithetic pairs"}
FLOOR_LABELS = {"bootstrap": "bootstrap of the clean samples", "independent": "second clean estimate (N more samples)"}
MODEL_KIND_LABELS = {"default": "the shipped CIFAR-10 pair", "local": "local folders (models directory)",
                     "hub": "hub download (timm / diffusers)"}
PREVIEW_PX = 128


@dataclass
class SidebarValues:
    """What the sidebar produced: the image (or None), the models, the settings and errors."""

    image: image_sources.LoadedImage | None
    models: model_sources.ModelChoice
    settings: dict[str, Any]
    attack_params: dict[str, Any]
    errors: list[str] = field(default_factory=list)


def widget_defaults() -> dict[str, Any]:
    """Every settings widget's key (keys double as setting names) and default value, the widgets of
    every attack included."""
    defaults = {**SETTING_DEFAULTS, **VIEW_DEFAULTS}
    for name, spec in ATTACKS.items():
        defaults[f"attack.{name}.linked"] = True
        for param in spec.params:
            defaults[f"attack.{name}.{param.name}"] = attack_widgets.widget_spec(param).value
    return defaults


def init_defaults() -> None:
    """Each widget's value in session state: its default the first time, then what it was.

    Streamlit deletes the state of a widget that a run did not draw (the other attacks' widgets,
    the models tab's folder pickers): when such a widget came back it started at its minimum (PGD
    after the adaptive attack showed eps 0, steps 1 and analysed with them). Writing every key
    back through the session-state API at the start of each run keeps the values of widgets that
    are not on screen."""
    for key, value in widget_defaults().items():
        st.session_state[key] = st.session_state[key] if key in st.session_state else value


# --------------------------------------------------------------------------------------------
# Image
# --------------------------------------------------------------------------------------------


def _decoded(name: str, data: bytes, source: str, label: str | None) -> image_sources.LoadedImage:
    """Decode once per distinct file: the last decoded image and the last refusals (messages
    only) are remembered for this session, so reruns neither decode again nor retry a refused
    file; older decoded images are dropped (image_sources.DECODED_IMAGES_PER_SESSION says why)."""
    images: dict = st.session_state.setdefault("_decoded", {})
    refused: dict = st.session_state.setdefault("_refused", {})
    key = (source, name, image_sources.bytes_digest(data))
    if key in refused:
        raise image_sources.ImageError(refused[key])
    if key not in images:
        try:
            image = image_sources.load_upload(name, data, source=source, true_label=label)
        except image_sources.ImageError as exc:
            # The message, not the exception: its traceback would keep the decoder's frames alive.
            while len(refused) >= image_sources.REFUSALS_PER_SESSION:
                refused.pop(next(iter(refused)))
            refused[key] = str(exc)
            raise image_sources.ImageError(str(exc)) from None
        while len(images) >= image_sources.DECODED_IMAGES_PER_SESSION:
            images.pop(next(iter(images)))
        images[key] = image
    return images[key]


def image_section(errors: list[str]) -> tuple[image_sources.LoadedImage | None, Any, Any]:
    """Uploader and gallery; an uploaded file wins while it is present. Returns the image (or the
    last good image when the new one is broken; the error goes into ``errors``) and two empty
    containers, for what the model is (above the uploader) and for the preview, filled once the
    model is known."""
    about = st.container()
    # No type= filter: Streamlit would print the eight extensions in a line cut off at this width;
    # the caption below lists them, and the engine's decoder rejects anything else with a message.
    upload = st.file_uploader("Upload an image", key="upload",
                              help="PNG, JPEG, WebP, BMP, TIFF or GIF (first frame); up to 20 MB. A file named "
                                   "after one of the model's classes (cat_01.jpg) shows that class as the true one.")
    st.caption("PNG · JPEG · WebP · BMP · TIFF · GIF, up to 20 MB")
    items = image_sources.list_gallery()
    image = None
    if items:
        names = [item.name for item in items]
        st.session_state.setdefault("gallery", image_sources.DEFAULT_GALLERY_IMAGE if image_sources.DEFAULT_GALLERY_IMAGE in names else names[0])
        if st.session_state["gallery"] not in names:
            st.session_state["gallery"] = names[0]
        labels = {item.name: item.label for item in items}
        chosen = st.selectbox("…or pick a sample", names, key="gallery", disabled=upload is not None,
                              format_func=lambda n: f"{labels[n]}: {n}" if labels.get(n) else n)
        item = items[names.index(chosen)]
    wanted = image_sources.safe_name(upload.name) if upload is not None else item.name if items else "the generated image"
    try:
        if upload is not None:
            image = _decoded(upload.name, upload.getvalue(), "upload", None)
        elif items:
            image = _decoded(item.name, item.path.read_bytes(), "gallery", item.label)
        else:
            image = st.session_state.setdefault("_generated", image_sources.generated_image())
    except Exception as exc:
        image = st.session_state.get("last_good_image")
        # Name the refused file and the one still shown: the page keeps the last good image.
        shown = f" Still showing the last image that worked, {image.name}." if image is not None else ""
        errors.append(analysis_settings.error_message(f"Cannot use {wanted}", exc) + shown)
    if image is not None:
        st.session_state["last_good_image"] = image
    st.radio("Fit to the model's input", PREPARE_MODES, key="image_mode", horizontal=True,
             format_func=image_sources.IMAGE_MODE_LABELS.get,
             help="resize: the whole image, stretched to the model's shape; centre crop: the largest centred "
                  "part with the model's shape; pad: the whole image on black bars (letterbox), nothing cut "
                  "or stretched")
    return image, about, st.container()


def with_true_label(image: image_sources.LoadedImage, info: model_sources.ModelInfo) -> image_sources.LoadedImage:
    """An upload named after one of the model's classes (cat_01.jpg) gets that class as its true label."""
    if image.true_label or image.source != "upload":
        return image
    label = image_sources.label_from_name(image.name, info.class_names)
    return dataclasses.replace(image, true_label=label) if label else image


def show_model_view(image: image_sources.LoadedImage, input_size: tuple[int, int], mode: str) -> None:
    """The image as the classifier sees it (resized, cropped or padded), enlarged without
    smoothing, and a notice when that changes the image a lot."""
    key = (image.digest, tuple(input_size), mode)
    if st.session_state.get("_preview", (None,))[0] != key:  # resizing a large photo on every rerun is slow
        try:
            prepared = to_uint8(prepare_image(image.pixels, input_size, mode=mode))
        except ImageError as exc:  # e.g. a letterbox canvas over the pixel limit: say it, no traceback
            st.warning(str(exc), icon=":material/aspect_ratio:")
            return
        repeat = max(1, PREVIEW_PX // max(prepared.shape[:2]))
        st.session_state["_preview"] = (key, np.repeat(np.repeat(prepared, repeat, axis=0), repeat, axis=1))
    shown = st.session_state["_preview"][1]
    truth = f" · true class: **{image.true_label}**" if image.true_label else ""
    where = "uploaded" if image.source == "upload" else image.source
    left, right = st.columns([1, 1.3], vertical_alignment="center")
    left.image(shown, width=PREVIEW_PX)
    right.caption(f"As the model sees it: {input_size[1]}×{input_size[0]} ({image_sources.IMAGE_MODE_LABELS.get(mode, mode)}) "
                  f"from {image.size_text} · {where} {image.name}{truth}")
    notice = fit_notice(tuple(image.pixels.shape[1:]), tuple(input_size), mode)
    if notice:
        st.warning(notice, icon=":material/aspect_ratio:")


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


PAIR_KIND = "pair:"  # model_kind values "pair:NAME": a named pair of fvit_core.models.MODEL_PAIRS


def _kind_label(kind: str) -> str:
    if kind.startswith(PAIR_KIND):
        name = kind[len(PAIR_KIND):]
        return f"{name} ({MODEL_PAIRS[name].training_data.split(' (')[0]}, real size)"
    return MODEL_KIND_LABELS.get(kind, kind)


def _start_small() -> None:
    """A real-size pair on a CPU starts with the fewest samples (it waits for a click anyway)."""
    kind = st.session_state.get("model_kind", "")
    if kind.startswith(PAIR_KIND) and MODEL_PAIRS[kind[len(PAIR_KIND):]].cpu_seconds_per_sample:
        st.session_state["n_samples"] = SAMPLE_CHOICES[0]


def models_section(errors: list[str]) -> model_sources.ModelChoice:
    """Shipped pair, a named real-size pair whose files are present, a local folder of the models
    directory, or (if allowed) hub names."""
    pairs = [PAIR_KIND + name for name in model_sources.available_pairs()]
    kinds = ["default", *pairs, "local"] + (["hub"] if model_sources.downloads_allowed() else [])
    if st.session_state.get("model_kind") not in kinds:
        st.session_state["model_kind"] = "default"
    with st.expander("Models", expanded=st.session_state["model_kind"] != "default"):
        kind = st.selectbox("Classifier and denoiser", kinds, key="model_kind", format_func=_kind_label,
                            on_change=_start_small)
        if "hub" not in kinds:
            st.caption("Hub models are off: start the app with FVIT_ALLOW_DOWNLOAD=1 to allow downloads.")
        if not pairs:
            st.caption("The paper's ImageNet pair (imagenet-vit-b16) appears here once its files are in the models "
                       "directory: docs/REALSIZE.md.")
        try:
            if kind.startswith(PAIR_KIND):
                return _named_pair(kind[len(PAIR_KIND):])
            if kind == "local":
                return _local_models()
            if kind == "hub":
                clf = st.text_input("timm model name", key="hub_classifier", placeholder="vit_tiny_patch16_224")
                den = st.text_input("diffusers denoiser id", key="hub_denoiser", placeholder="google/ddpm-cifar10-32")
                return model_sources.ModelChoice("hub", model_sources.check_hub_name(clf, "classifier"),
                                         model_sources.check_hub_name(den, "denoiser"))
        except Exception as exc:
            errors.append(analysis_settings.error_message("Models", exc))
            return st.session_state.get("last_good_models", model_sources.ModelChoice())
    return model_sources.ModelChoice()


def _named_pair(name: str) -> model_sources.ModelChoice:
    spec = MODEL_PAIRS[name]
    st.caption(spec.description)
    if spec.cpu_seconds_per_sample:
        st.caption(f"On a CPU each DDS sample takes about {spec.cpu_seconds_per_sample:.0f} s in float32 (half that "
                   "where bfloat16 is native; measured on 2 cores, docs/PERFORMANCE.md): analyses wait for a click, "
                   f"start with N = {SAMPLE_CHOICES[0]}, show progress and can be cancelled.")
    return model_sources.ModelChoice("pair", pair=name)


def _local_models() -> model_sources.ModelChoice:
    root = models_dir()
    st.caption(f"Folders in the models directory {root} (FVIT_MODELS_DIR).")
    classifiers, denoisers = model_sources.local_model_folders("classifier", root), model_sources.local_model_folders("denoiser", root)
    if not classifiers or not denoisers:
        raise ModelLoadError(f"the models directory {root} needs at least one classifier folder "
                                   "(config.json + model.safetensors) and one denoiser folder (unet/ + scheduler/)")
    clf = st.selectbox("Classifier folder", classifiers, key="local_classifier")
    den = st.selectbox("Denoiser folder", denoisers, key="local_denoiser")
    return model_sources.ModelChoice("local", model_sources.resolve_local_model(clf, "classifier", root),
                             model_sources.resolve_local_model(den, "denoiser", root))


# --------------------------------------------------------------------------------------------
# Attack
# --------------------------------------------------------------------------------------------


def _param_widget(key: str, spec: attack_widgets.WidgetSpec) -> Any:
    if spec.kind == "checkbox":
        return st.checkbox(spec.label, key=key, help=spec.help)
    if spec.kind == "select":
        return st.selectbox(spec.label, spec.options, key=key, help=spec.help)
    if spec.kind == "slider":
        return st.slider(spec.label, spec.min, spec.max, step=spec.step, format=spec.format, key=key, help=spec.help)
    return st.number_input(spec.label, spec.min, spec.max, step=spec.step, format=spec.format, key=key, help=spec.help)


def attack_section(settings: dict[str, Any]) -> dict[str, Any]:
    """Attack choice and its parameters, generated from the registry's ParamSpecs."""
    name = st.selectbox("Attack", list(ATTACKS), key="attack", format_func=lambda n: ATTACKS[n].label)
    spec = ATTACKS[name]
    st.caption(attack_widgets.first_sentence(spec.description))
    linkable = attack_widgets.linked_params(spec)
    linked = False
    if linkable:
        what = ", ".join("α = ε/5" if n == "alpha" else n for n in linkable)
        linked = st.checkbox(f"Tie to the analysis ({what})", key=f"attack.{name}.linked",
                             help="the top-k attack attacks the analysed k and explanation; the adaptive attack "
                                  "the analysed σ; the step size follows the budget as in the paper")
    shown = {}
    for param in spec.params:
        if linked and param.name in linkable:
            continue
        shown[param.name] = _param_widget(f"attack.{name}.{param.name}", attack_widgets.widget_spec(param))
    return attack_widgets.attack_params(spec, shown, linked=linked, settings=settings)


# --------------------------------------------------------------------------------------------
# Explanation, smoothing, metrics
# --------------------------------------------------------------------------------------------


def faithful_section(num_patches: int) -> None:
    """sigma, samples, k and the smoothing mode."""
    st.selectbox("Smoothing", SMOOTHING_MODES, key="mode", format_func=MODE_LABELS.get)
    st.slider("σ: noise std (pixel units)", 0.01, 1.0, step=0.01, key="sigma",
              help="Gaussian noise added before denoising, in [0, 1] pixel units (0.25 = a quarter of the range)")
    st.select_slider("Noise samples N", SAMPLE_CHOICES, key="n_samples",
                     help=f"Monte Carlo samples per estimate; more than {analysis_settings.MAX_INTERACTIVE_SAMPLES} waits for a click")
    st.radio("Noise draws", SAMPLING_SCHEMES, key="sampling", horizontal=True, format_func=SAMPLING_LABELS.get,
             help="antithetic: each noise vector e is used with its negation -e, which cancels much of the Monte "
                  "Carlo error of the maps (docs/PERFORMANCE.md measures it); Cohen's certificate then counts one "
                  "draw of each pair")
    if st.session_state["k"] > num_patches:
        st.session_state["k"] = num_patches
    st.slider("k: top-k focal patches", 1, num_patches, step=1, key="k",
              help=f"patches compared by the top-k overlap Vₖ (this model has {num_patches})")


def explanation_section(class_names: tuple[str, ...]) -> None:
    """Method, head fusion and the class the explanation explains (default: the predicted class,
    as pytorch-grad-cam and Captum default to)."""
    st.selectbox("Method", EXPLANATION_METHODS, key="method", format_func=METHOD_LABELS.get)
    st.selectbox("Head fusion", HEAD_FUSIONS, key="head_fusion")
    if st.session_state["target"] is not None and st.session_state["target"] >= len(class_names):
        st.session_state["target"] = None  # another model with fewer classes
    st.selectbox("Explain class", [None, *range(len(class_names))], key="target",
                 format_func=lambda i: "the predicted class" if i is None else f"{class_names[i]} ({i})",
                 help="the class whose logit the gradient and LRP methods explain, for the clean and the attacked "
                      "image and every noise draw of the FViT; by default each image's (and each draw's) own "
                      "prediction. Raw attention and rollout do not depend on the class.")
    if st.session_state["target"] is not None and st.session_state["method"] not in CLASS_METHODS:
        st.caption(f"{METHOD_LABELS[st.session_state['method']]} is the same whatever the class: pick a gradient or "
                   "LRP method to see the chosen class's map.")


def advanced_section() -> None:
    with st.expander("Advanced"):
        st.slider("β: required overlap for the top-k certificate", 0.05, 1.0, step=0.05, key="beta")
        st.number_input("Seed", 0, 2**31 - 1, step=1, key="seed", help="same seed, same numbers")
        st.checkbox("Shared noise for clean and attacked (common random numbers)", key="shared_noise",
                    help="lower variance of the difference, but flatters Vₖ at small N; off by default")
        st.checkbox("Noise floor (Monte Carlo Vₖ between two clean estimates)", key="noise_floor")
        st.selectbox("Noise floor estimator", NOISE_FLOOR_ESTIMATORS, key="noise_floor_estimator",
                     format_func=FLOOR_LABELS.get,
                     help="second estimate (the default): N more samples, the floor's definition; bootstrap: from the "
                          "clean samples, no extra passes, but it reads about 0.006 high (docs/METRICS.md)")
        st.selectbox("Precision of the DDS networks", PRECISION_CHOICES, key="precision",
                     format_func=PRECISION_LABELS.get,
                     help="bfloat16 is about 1.8x faster on CPUs with AVX512-BF16; its effect on labels and "
                          "top-k sets is far below the Monte Carlo noise (docs/PERFORMANCE.md)")
        st.checkbox("Stop sampling early once label and top-k set are settled", key="early_stop",
                    help="sequential test at level 0.05; saves samples mostly for small k")
        st.number_input("Sensitivity perturbations M (0 = off)", 0, 64, step=4, key="sensitivity_samples",
                        help="neighbourhood sensitivity over M random images in the Linf ball of radius 0.02; "
                             "costs M x N samples for the FViT")
        st.number_input("Bootstrap resamples", 0, 2000, step=50, key="bootstrap")
        st.number_input("Rényi order α", 1.01, 100.0, step=0.5, key="renyi_alpha")
        st.number_input("Confidence level α (certificates)", 0.0001, 0.1, step=0.001, format="%.4f",
                        key="confidence_alpha")


DEFAULT_MODEL_INFO = model_sources.ModelInfo((32, 32), 64, ())
SIDEBAR_TABS = ("Image", "FViT", "Explanation", "Attack")


def render(model_input) -> SidebarValues:
    """Draw the sidebar: one tab per group of settings (image, FViT, explanation, attack), so each
    is one click away on a laptop screen. ``model_input(models, errors)`` gives the chosen
    classifier's :class:`model_sources.ModelInfo`, or None when the models cannot be loaded (then the last
    known one is used)."""
    init_defaults()
    errors: list[str] = []
    with st.sidebar:
        image_tab, fvit_tab, explanation_tab, attack_tab = st.tabs(list(SIDEBAR_TABS))
        with image_tab:
            image, about, preview = image_section(errors)
        with fvit_tab:
            models = models_section(errors)
        info = model_input(models, errors) or st.session_state.get("_model_info", DEFAULT_MODEL_INFO)
        st.session_state["_model_info"] = info
        with about:
            st.caption(info.describe(models.pair if models.kind == "pair" else MODEL_KIND_LABELS[models.kind]))
        if image is not None:
            image = with_true_label(image, info)
            with preview:
                show_model_view(image, info.input_size, st.session_state["image_mode"])
        with fvit_tab:
            faithful_section(info.num_patches)
            advanced_section()
        with explanation_tab:
            explanation_section(tuple(info.class_names))
        settings = {key: st.session_state[key] for key in SETTING_DEFAULTS}
        with attack_tab:
            attack_values = attack_section(settings)
        settings = {key: st.session_state[key] for key in SETTING_DEFAULTS}
    return SidebarValues(image=image, models=models, settings=settings, attack_params=attack_values, errors=errors)
