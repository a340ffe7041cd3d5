"""Pieces the pages share: the page header, figures as cached images, metric cards."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st
from matplotlib.figure import Figure

from app import session
from fvit_core.report import export, overlay, style
from fvit_core.analysis.noise_floor import floor_description
from fvit_core.analysis.result import AnalysisResult

SCREEN_DPI = 200

SELECTION_LABELS = {"second-estimate": "the second clean estimate's votes",
                    "vanilla-prediction": "the vanilla ViT's clean prediction",
                    "shared": "the estimation votes (not independent)"}


sub = style.sub  # V₈, D₂: the charts' spelling
_PNG_MEMO_SIZE = 24


def page_header(title: str, intro: str) -> session.Current | None:
    """Title, one-line intro, what was analysed, and a notice when the result is not for the
    sidebar's current settings. Returns the current analysis (None before the first one)."""
    st.subheader(title)
    st.caption(intro)
    cur = session.current()
    if cur is None:
        st.info("No analysis yet: pick an image and settings in the sidebar.")
        return None
    if session.is_stale():
        st.warning("Showing the last completed analysis: the sidebar's settings have not been computed "
                   "(see the message above).")
    st.caption(summary_line(cur.result, cur.image))
    return cur


def summary_line(result: AnalysisResult, image=None) -> str:
    """Image (and its true class when known), attack, perturbation size, explanation, FViT
    settings and time of one analysis, on one line."""
    d, cfg = result.faithful, result.config
    if result.attack["name"] == "none":
        crafted = ""  # nothing was crafted: the attacked image is the clean one
    elif result.attack["crafted_on"] == "fvit":
        crafted = ", crafted on the FViT (adaptive)"
    else:
        crafted = ", crafted on the vanilla ViT (transfer)"
    t_star = f", t* = {d.t_star}" if d.t_star is not None else ""
    asked = cfg.sampling.n_samples
    drawn = f" of {asked} (stopped early)" if d.n_samples != asked and cfg.smoothing.noisy else ""
    shown = ""
    if image is not None:
        truth = f", true class **{image.true_label}**" if image.true_label else ", true class unknown"
        shown = f"**Image** {image.name}{truth}. "
    target = style.target_text(result)
    return (f"{shown}**Attack** {style.attack_summary(result)}{crafted}; {style.perturbation_summary(result)}. "
            f"**Explanation** {style.method_name(cfg.explanation.method)} (heads: {cfg.explanation.head_fusion}"
            f"{'; ' + target if target else ''}). "
            f"**FViT** {style.MODE_NAMES.get(d.mode, d.mode)}, σ = {d.sigma:g}{t_star}, N = {d.n_samples} samples{drawn}, "
            f"top-{cfg.explanation.k} of {len(result.vanilla.overlap_curve)} patches. "
            f"Computed in {result.timing['total']:.1f} s.")


def figure_png(cur: session.Current, name: str, build: Callable[[], Figure]) -> bytes:
    """PNG bytes of a matplotlib figure, rendered once per (analysis, figure)."""
    memo: dict = st.session_state.setdefault("_png", {})
    key = (cur.key, name)
    if key not in memo:
        if len(memo) >= _PNG_MEMO_SIZE:
            memo.pop(next(iter(memo)))
        memo[key] = export.figure_to_bytes(build(), "png", dpi=SCREEN_DPI)
    return memo[key]


_KEPT_SIZE = 40


def _analysis_tag(cur: session.Current) -> tuple:
    """What exports depend on: the analysis and the file on screen (its name and, cheaply, its
    bytes: the same pixels re-uploaded under another name or encoding export the new file)."""
    data = cur.image.data
    return cur.key, cur.image.name, len(data), data[:64], data[-64:]


def kept(cur: session.Current, key: tuple):
    """What :func:`kept_bytes` built for this analysis under ``key``, or None."""
    return st.session_state.get("_kept", {}).get((_analysis_tag(cur), key))


def kept_bytes(cur: session.Current, key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` once per (analysis, key), kept in the session: download buttons get the same
    bytes on every rerun, and a new analysis drops the old ones."""
    memo: dict = st.session_state.setdefault("_kept", {})
    tag = _analysis_tag(cur)
    full = (tag, key)
    if full not in memo:
        for old in [k for k in memo if k[0] != tag]:
            del memo[old]
        while len(memo) >= _KEPT_SIZE:
            memo.pop(next(iter(memo)))
        memo[full] = build()
    return memo[full]


def show_plotly(fig, key: str) -> None:
    # No "download as PNG" button in the chart's toolbar: exports are on the Export page, with the
    # settings in the file (and the toolbar's button names no method, sigma or N).
    # theme=None: Streamlit's theme recolours the low end of colour scales (inferno turned pink), and the
    # charts must look as the exported HTML does.
    st.plotly_chart(fig, key=key, width="stretch", theme=None,
                    config={"displaylogo": False, "modeBarButtonsToRemove": ["toImage", "lasso2d", "select2d"]})


def show_on_photo(cur: session.Current, scale: style.MapScale) -> None:
    """Both models' clean and attacked maps over the uploaded photo at its own size (as
    pytorch-grad-cam and Captum blend them), with an opacity slider; the map lies over the part of
    the photo the model's input showed (the crop for centre crop, the letterbox for pad)."""
    result, photo = cur.result, cur.image.pixels
    opacity = st.slider("Map opacity over the photo", 0.0, 1.0, step=0.05, key="overlay_opacity")
    # Two per row (a row per model): four in a row leave a photo a quarter of the page wide.
    columns = [column for _ in style.MODEL_KEYS for column in st.columns(2)]
    panels = [(which, name) for which in style.MODEL_KEYS for name in ("clean", "attacked")]
    for column, (which, name) in zip(columns, panels):
        view = getattr(style.comparison(result, which), name)
        blended = kept_bytes(cur, ("on_photo", which, name, opacity), lambda v=view: overlay.blend(
            photo, scale.values(v), result.grid_size, result.classifier_size, result.config.image_mode, scale, opacity))
        column.image(blended, caption=f"{style.model_label(result, which)}, {name}: {view.label_name} "
                                      f"({view.confidence:.2f})", width="stretch")
    height, width = result.original_size
    fit = {"resize": "the whole photo, stretched to the model's square", "center_crop": "the centred crop the model saw",
           "pad": "the letterboxed photo (the bars were the model's black)"}.get(result.config.image_mode, "")
    st.caption(f"{width}×{height} px photo; the {result.grid_size[0]}×{result.grid_size[1]} patch map is resampled "
               f"smoothly over {fit}. Colour: {scale.label}. {result.fit_notice or ''}")


INPUT_PX = 160


def show_inputs(cur: session.Current) -> None:
    """Clean, attacked, amplified perturbation and one denoised sample, enlarged without smoothing
    (plain arrays: no figure to render on every rerun)."""
    result = cur.result
    shown, gain = style.perturbation_view(result)
    d = result.faithful
    denoised = {"dds": f"denoised sample (σ = {d.sigma:g})", "rs": f"noisy input (σ = {d.sigma:g})",
                "denoise-only": "denoised (no noise)", "multistep": f"denoised, multi-step (σ = {d.sigma:g})"}
    panels = (("clean", result.clean_image), ("attacked", result.attacked_image),
              (f"perturbation ×{gain:.0f} (grey = unchanged)", shown),
              (denoised.get(d.mode, "model input") + ", as the FViT classifies it", d.denoised_sample))
    for column, (caption, image) in zip(st.columns(len(panels)), panels):
        pixels = style.to_hwc(image)
        repeat = max(1, INPUT_PX // max(pixels.shape[:2]))
        column.image((pixels.repeat(repeat, axis=0).repeat(repeat, axis=1) * 255).round().astype("uint8"),
                     caption=caption, width=min(INPUT_PX, pixels.shape[1] * repeat))
    st.caption(style.settings_text(result))


# --------------------------------------------------------------------------------------------
# Metric cards
# --------------------------------------------------------------------------------------------


def floor_verdict(result: AnalysisResult) -> str:
    """Whether the FViT's V_k differs from its Monte Carlo noise floor, in words."""
    d, v = result.faithful, result.fvit.topk_overlap
    if d.topk_overlap_floor is None:
        return "No noise floor computed (switch it on under Advanced): Vₖ alone cannot separate attack from sampling noise."
    ci = f" (95% CI {d.topk_overlap_ci[0]:.2f}–{d.topk_overlap_ci[1]:.2f})" if d.topk_overlap_ci else ""
    reaches = v >= d.topk_overlap_floor or (d.topk_overlap_ci is not None and d.topk_overlap_ci[1] >= d.topk_overlap_floor)
    if reaches:
        return (f"V{sub(result.config.explanation.k)} = {v:.2f}{ci} reaches the noise floor {d.topk_overlap_floor:.2f} ({floor_description(d.noise_floor_estimator)}): "
                "no attack effect beyond sampling noise.")
    return (f"V{sub(result.config.explanation.k)} = {v:.2f}{ci} is below the noise floor {d.topk_overlap_floor:.2f}: the attack moved focal patches "
            "beyond sampling noise.")


def prediction_cards(result: AnalysisResult, which: str) -> None:
    cmp_ = style.comparison(result, which)
    alpha = result.config.renyi_alpha
    st.metric("Prediction (clean → attacked)", f"{cmp_.clean.label_name} → {cmp_.attacked.label_name}",
              delta="label flipped" if cmp_.label_flip else "label kept",
              delta_color="red" if cmp_.label_flip else "green", delta_arrow="off")
    left, right = st.columns(2)
    left.metric("Confidence (clean → attacked)", f"{cmp_.clean.confidence:.2f} → {cmp_.attacked.confidence:.2f}",
                help="probability of the predicted class on each image")
    bound = f"bound {result.faithful.certified.prediction_bound:.3g}" if which == "fvit" else "no bound"
    right.metric(f"Divergence D{sub(alpha)} (Rényi, nats)", f"{cmp_.divergences['renyi']:.3g}",
                 delta=bound, delta_color="gray", delta_arrow="off",
                 help="Rényi divergence between the clean and attacked prediction distributions; for the FViT "
                      "the guaranteed bound α‖δ‖₂²/(2σ²) at this perturbation's L2 size. "
                      f"JS {cmp_.divergences['js']:.3g}, TV {cmp_.divergences['tv']:.3g}.")


def overlap_cards(result: AnalysisResult, which: str) -> None:
    k = result.config.explanation.k
    cmp_ = style.comparison(result, which)
    help_text = (f"Fraction of the clean image's top-{k} patches still among the attacked image's top-{k}: "
                 "1 = focal points kept, 0 = all moved.")
    left, right = st.columns(2)
    if which == "vanilla":
        left.metric(f"Top-{k} overlap V{sub(k)}", f"{cmp_.topk_overlap:.2f}", delta="exact", delta_color="gray",
                    delta_arrow="off", help=help_text)
        right.metric("Noise floor (clean vs clean)", "1.00", delta="deterministic", delta_color="gray",
                     delta_arrow="off", help="The vanilla ViT has no sampling: two runs on the clean image agree "
                                             "exactly, so every drop in Vₖ is the attack's.")
        st.caption(f"V{sub(k)} = {cmp_.topk_overlap:.2f}: {round((1 - cmp_.topk_overlap) * k)} of the {k} focal "
                   "patches moved under the attack.")
        return
    d = result.faithful
    ci = d.topk_overlap_ci
    left.metric(f"Top-{k} overlap V{sub(k)}", f"{cmp_.topk_overlap:.2f}",
                delta=f"95% CI {ci[0]:.2f}–{ci[1]:.2f}" if ci else None, delta_color="gray", delta_arrow="off",
                help=help_text + " Bootstrap interval over the noise samples.")
    floor = d.topk_overlap_floor
    floor_ci = d.topk_overlap_floor_ci
    right.metric("Noise floor (clean vs clean)", f"{floor:.2f}" if floor is not None else "n/a",
                 delta=f"95% CI {floor_ci[0]:.2f}–{floor_ci[1]:.2f}" if floor_ci else None,
                 delta_color="gray", delta_arrow="off",
                 help="Vₖ between two independent FViT estimates on the same clean image: what sampling noise "
                      "alone does. An attack effect shows only as Vₖ clearly below this.")
    st.caption(floor_verdict(result))


def abstain_text(result: AnalysisResult) -> str:
    """Why CERTIFY abstained, in words."""
    c, names = result.faithful.certified, result.class_names
    guess, top = names[c.guess_class], result.fvit.clean.label_name
    source = SELECTION_LABELS.get(c.selection, c.selection)
    if c.abstain_reason == "guess-not-top":
        return (f"Abstained: CERTIFY's class guess, {guess} (from {source}), is not the FViT's top class ({top}); "
                f"its share of the votes is bounded below by only {c.p_a_lower:.2f} < 1/2. A certificate for {top} "
                "needs an independent guess of it (noise floor estimator: second clean estimate).")
    return (f"Abstained: the FViT's top class {guess} has no certified majority: p_A ≥ {c.p_a_lower:.2f} < 1/2 at "
            f"α = {result.config.confidence_alpha:g} ({result.faithful.n_samples} samples; more samples or a smaller σ "
            "may certify it).")


def certificate_cards(result: AnalysisResult) -> None:
    """Certified radii of the FViT at the clean image and the prediction-stability bound."""
    c, d = result.faithful.certified, result.faithful
    k = result.config.explanation.k
    left, right = st.columns(2)
    left.metric("Certified class radius (L2)", "abstain" if c.predicted_class < 0 else f"{c.class_radius:.3f}",
                delta=f"p_A ≥ {c.p_a_lower:.2f} ({result.class_names[c.guess_class]})", delta_color="gray",
                delta_arrow="off",
                help="Cohen et al.'s CERTIFY: the smoothed class cannot change within this L2 distance (pixel units). "
                     "It guesses a class independently of the votes and certifies it when the lower confidence "
                     "bound p_A on its share of the votes is at least 1/2; otherwise it abstains.")
    if c.abstain_reason is not None:
        st.caption(abstain_text(result))
    right.metric(f"Certified top-{k} radius (L2)", f"{c.topk_radius_l2:.4f}",
                 delta=f"Linf {c.topk_radius_linf * 255:.3f}/255", delta_color="gray", delta_arrow="off",
                 help=f"V{sub(k)} ≥ β = {result.config.explanation.beta:g} is guaranteed for every perturbation within this radius "
                      "(pixel units; Linf = L2 / sqrt(3HW)).")
    covered = "covers" if c.topk_radius_l2 >= c.perturbation_l2 else "does not cover"
    st.caption(f"Prediction stability: D{sub(result.config.renyi_alpha)} ≤ {c.prediction_bound:.3g} nats for "
               f"‖δ‖₂ ≤ {c.perturbation_l2:.3f} (measured {c.measured_renyi:.3g}). The top-k radius {covered} this "
               f"attack's ‖δ‖₂. {d.n_samples} samples ({d.precision}); CERTIFY's class guess: "
               f"{SELECTION_LABELS.get(c.selection, c.selection)}.")
