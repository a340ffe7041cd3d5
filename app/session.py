"""Models, results and the current analysis of one browser session.

- Models: ``st.cache_resource`` (one copy per server, shared by every session and thread; the
  engine only reads them, and nothing here may modify them).
- Results: a per-session LRU of :class:`AnalysisResult` keyed by (image digest, settings), so
  going back to an earlier setting is instant; the sigma sweep fills the same cache.
- Stages: one :class:`AnalysisCache` per server (``st.cache_resource``), which the engine's
  analysis reuses stages from (a new attack with the clean estimates cached, and so on).
- The current analysis: the result on screen, with the image and models it came from. It stays
  on screen when newer settings fail (bad upload, unloadable model, invalid value).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Callable

import streamlit as st

from app import analysis_settings, image_sources, model_sources
from fvit_core.analysis import sweep
from fvit_core.analysis.cache import AnalysisCache
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.explorer import layer_head_attention, smoothed_layer_head_attention
from fvit_core.analysis.pipeline import analyze
from fvit_core.analysis.result import AnalysisResult
from fvit_core.models import MODEL_PAIRS, ModelPair, load_pair
from fvit_core.runtime.cache import LRU

RESULT_CACHE_SIZE = 32


@st.cache_resource(max_entries=4, show_spinner="Loading models…")
def cached_pair(kind: str, classifier: str | None, denoiser: str | None, pair: str = "default") -> ModelPair:
    """Load a model pair once per server (read-only afterwards)."""
    return load_pair(pair, classifier=classifier, denoiser=denoiser, allow_download=kind == "hub")


@st.cache_resource
def analysis_cache() -> AnalysisCache:
    """The stages recent analyses computed, one cache per server (entries are keyed by
    everything they depend on, so sessions can share them): a slider that changes one setting
    recomputes only what depends on it."""
    return AnalysisCache()


def pair_for(models: model_sources.ModelChoice) -> ModelPair:
    return cached_pair(models.kind, models.classifier, models.denoiser, models.pair)


def model_input(models: model_sources.ModelChoice, errors: list[str]) -> model_sources.ModelInfo | None:
    """Input size, patches, classes and training data of the chosen classifier; None (and a
    message) on failure."""
    try:
        clf = pair_for(models).classifier
    except Exception as exc:
        errors.append(analysis_settings.error_message("Cannot load the models", exc))
        return None
    st.session_state["last_good_models"] = models
    spec = MODEL_PAIRS.get(models.pair) if models.kind in ("default", "pair") else None
    return model_sources.ModelInfo(input_size=tuple(clf.img_size), num_patches=clf.num_patches,
                                   class_names=tuple(clf.class_names),
                                   training_data=spec.training_data if spec else None)


@dataclass(frozen=True)
class Current:
    """The analysis on screen and what produced it."""

    key: str
    result: AnalysisResult
    image: image_sources.LoadedImage
    models: model_sources.ModelChoice


def results() -> LRU:
    return st.session_state.setdefault("_results", LRU(RESULT_CACHE_SIZE))


def current() -> Current | None:
    return st.session_state.get("_current")


def wanted_key() -> str | None:
    """The key of the settings in the sidebar now (None when they are invalid)."""
    return st.session_state.get("_wanted_key")


def is_stale() -> bool:
    cur = current()
    return cur is not None and cur.key != wanted_key()


def progress_bar(text: str) -> tuple[Callable[[str, float], None], Any]:
    """A progress bar and the ``progress(stage, fraction)`` callback that drives it."""
    bar = st.progress(0.0, text=text)

    def report(stage: str, fraction: float) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=f"{text} {stage}…")

    return report, bar


def compute(image: image_sources.LoadedImage, config: AnalysisConfig, models: model_sources.ModelChoice,
            progress: Callable[[str, float], None] | None = None) -> AnalysisResult:
    """Cached analysis (ValueError for invalid settings, images or models)."""
    key = analysis_settings.settings_key(image.digest, config)
    cached = results().get(key)
    if cached is not None:
        return cached
    result = analyze(image.pixels, config, pair=pair_for(models), progress=progress, cache=analysis_cache())
    results().put(key, result)
    return result


def show_errors(messages: list[str]) -> None:
    for message in messages:
        st.error(message)


def update(values) -> None:
    """Make the current analysis match the sidebar, computing if needed and allowed.

    Quick settings compute at once; expensive ones (:func:`analysis_settings.expensive_reason`) wait for the
    **Run analysis** button. Errors are shown on the page; the last good analysis stays current.
    """
    show_errors(values.errors)
    st.session_state["_wanted_key"] = None
    if values.errors or values.image is None:
        return
    try:
        config = analysis_settings.build_config(values.settings, values.attack_params, values.models)
        config.check_model(pair_for(values.models).classifier.num_patches)
    except Exception as exc:
        st.error(analysis_settings.error_message("Invalid settings", exc))
        return
    key = analysis_settings.settings_key(values.image.digest, config)
    st.session_state["_wanted_key"] = key
    cur = current()
    if cur is not None and cur.key == key:
        if cur.image is not values.image and (cur.image.name, cur.image.data) != (values.image.name, values.image.data):
            # The same pixels from another file (a re-upload under a new name, another encoding):
            # the result stands, but exports must name and carry the file now on screen (issue 26).
            st.session_state["_current"] = Current(key=key, result=cur.result, image=values.image, models=cur.models)
        return
    reason = analysis_settings.expensive_reason(config)
    waiting = st.empty()  # the notice and the buttons go once the analysis is done
    if key not in results() and reason:
        with waiting.container():
            st.info(f"These settings take a while ({reason}), so they wait for a click.")
            if not st.button("Run analysis", key="run", type="primary"):
                return
    with waiting.container():
        report, bar = progress_bar("Analysing:")
        if reason:
            # Any click reruns the page, which stops this run at its next progress report (after the
            # forward batch in progress); the settings then wait for "Run analysis" again.
            st.button("Cancel", key="cancel_run", help="stop this analysis after the batch in progress")
    try:
        result = compute(values.image, config, values.models, report)
    except Exception as exc:  # the last good analysis stays on screen
        waiting.empty()
        st.error(analysis_settings.error_message("The analysis failed", exc))
        return
    waiting.empty()
    st.session_state["_current"] = Current(key=key, result=result, image=values.image, models=values.models)


_FROZEN = {"done": False}  # once per server process (this module is imported once)


_JANITOR = {"started": False}
JANITOR_SECONDS = 30.0


def start_memory_janitor() -> None:
    """Once per server: a daemon thread that, every JANITOR_SECONDS, collects garbage and gives
    freed heap back to the system (glibc's malloc_trim, where there is one).

    Streamlit collects garbage after a script run, but a session's state is dropped only when it
    expires (``server.disconnectedSessionTTL``, 120 s after its tab closed), when usually no run
    follows: its figures and results, full of reference cycles, stayed in memory until the next
    visitor (issue 26). With the long-lived objects frozen (freeze_long_lived_objects) a
    collection walks only what sessions made: milliseconds.
    """
    if _JANITOR["started"]:
        return
    import ctypes
    import ctypes.util
    import threading
    import time

    libc_name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None) if libc_name else None

    def loop() -> None:
        while True:
            time.sleep(JANITOR_SECONDS)
            gc.collect()
            if trim is not None:
                trim(0)

    threading.Thread(target=loop, name="fvit-memory-janitor", daemon=True).start()
    _JANITOR["started"] = True


def freeze_long_lived_objects() -> None:
    """Once per server, after the first run that put an analysis on screen: move every object
    alive now (torch, timm, diffusers, plotly, the cached models: about 620,000 objects) out of
    the garbage collector's reach with :func:`gc.freeze`.

    Streamlit collects garbage after every run (``runner.postScriptGC``, kept on for memory): a
    full collection walks every tracked object, 0.32-0.35 s here, a third of the sigma slider's
    round trip (issue 24, docs/PERFORMANCE.md). Frozen objects are still freed when their last
    reference goes; only cycles among them are no longer collected.
    """
    if _FROZEN["done"] or current() is None:
        return
    gc.collect()
    gc.freeze()
    _FROZEN["done"] = True


def layer_maps(cur: Current) -> Any:
    """The vanilla ViT's per-layer, per-head maps (2, L, heads, P) for the current result, cached per result."""
    memo: dict = st.session_state.setdefault("_layer_maps", {})
    if cur.key not in memo:
        memo.clear()
        memo[cur.key] = layer_head_attention(pair_for(cur.models), cur.result.clean_image, cur.result.attacked_image)
    return memo[cur.key]


def fvit_layer_maps(cur: Current) -> Any:
    """The Faithful ViT's per-layer, per-head maps (2, L, heads, P), averaged over the analysis's
    noise samples (same mode, sigma, N and seed), cached per result."""
    memo: dict = st.session_state.setdefault("_fvit_layer_maps", {})
    if cur.key not in memo:
        memo.clear()
        cfg, d = cur.result.config, cur.result.faithful
        memo[cur.key] = smoothed_layer_head_attention(
            pair_for(cur.models), cur.result.clean_image, cur.result.attacked_image, mode=d.mode, sigma=d.sigma,
            n_samples=d.n_samples, seed=cfg.seed, multistep_steps=cfg.smoothing.multistep_steps)
    return memo[cur.key]


def sweep_status(cur: Current, sigmas) -> tuple[list[AnalysisResult], list[AnalysisConfig]]:
    """Results of the sigma sweep around the current analysis already cached, and the configs
    still to compute (the current sigma is always included)."""
    configs = sweep.sweep_configs(cur.result.config, [*sigmas, cur.result.config.smoothing.sigma])
    done, missing = [], []
    for config in configs:
        cached = results().get(analysis_settings.settings_key(cur.image.digest, config))
        (done.append(cached) if cached is not None else missing.append(config))
    return done, missing


def run_sweep(cur: Current, configs: list[AnalysisConfig]) -> bool:
    """Compute the missing sweep points into the result cache, with one progress bar.

    Returns whether every point was computed (a failure is shown on the page)."""
    report, bar = progress_bar("Sweep:")
    try:
        sweep.run_sweep(configs, lambda config, stage: compute(cur.image, config, cur.models, stage), progress=report)
    except Exception as exc:
        st.error(analysis_settings.error_message("The sweep failed", exc))
        return False
    finally:
        bar.empty()
    return True
