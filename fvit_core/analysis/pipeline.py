"""One analysis: attack an image, then compare the vanilla ViT with the Faithful ViT (DDS).

:func:`analyze` is the single call that the dashboard and the command line share. It returns an
:class:`AnalysisResult` of plain numpy arrays and numbers (no tensors, no modules), which
:meth:`AnalysisResult.to_json` turns into the documented JSON.

The steps: prepare the image in the smoothing space (method.pixel_space); attack it and run the
vanilla ViT (the attack stage, cached per model: runtime.cache); sample the FViT on the clean and
the attacked image (method.faithful_vit, under the settings' runtime); compare (analysis.metrics),
estimate the noise floor (analysis.noise_floor) and the guarantees (analysis.certificates). On a
CPU the attack runs on a single-threaded worker while the clean image is sampled (runtime.workers).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from fvit_core.analysis import metrics
from fvit_core.analysis.certificates import certificates
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.noise_floor import bootstrap_overlap, floor_pairs, map_metrics_floor, noise_floor_estimate
from fvit_core.analysis.result import AnalysisResult, FaithfulDetails, ImageView, ModelComparison
from fvit_core.attacks.registry import get_attack, run_attack
from fvit_core.data.images import image_digest, prepare_image
from fvit_core.data.pixels import check_pixels
from fvit_core.errors import NON_FINITE_HINT, ModelLoadError, SettingError
from fvit_core.explanations.sensitivity import ball_perturbations, relative_change, sensitivity
from fvit_core.method.denoise import check_schedule
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.method.monte_carlo import EarlyStop, SmoothedOutput
from fvit_core.method.pixel_space import resize_pixels, smoothing_size
from fvit_core.method.vanilla import vanilla
from fvit_core.models import ModelPair, load_pair
from fvit_core.protocol.seeds import ImageSeeds, attack_parts, smoothing_parts
from fvit_core.runtime.cache import ModelCache
from fvit_core.runtime.precision import resolve_precision, weights_fingerprint
from fvit_core.runtime.workers import submit_single_threaded

__all__ = ["AnalysisConfig", "AnalysisResult", "ProgressFn", "analyze", "analyze_many", "clear_cache"]

ProgressFn = Callable[[str, float], None]


# --------------------------------------------------------------------------------------------


class _Timer:
    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - since
        return now

    def finish(self) -> dict[str, float]:
        return {**self.parts, "total": time.perf_counter() - self._start}


def _view(probs: np.ndarray, attention: np.ndarray, names: tuple[str, ...]) -> ImageView:
    label = int(np.argmax(probs))
    return ImageView(label=label, label_name=names[label], confidence=float(probs[label]), probs=probs, attention=attention)


def _compare(clean: ImageView, attacked: ImageView, k: int, renyi_alpha: float, grid: tuple[int, int]
             ) -> ModelComparison:
    div = {name: float(v) for name, v in metrics.divergences(clean.probs, attacked.probs, renyi_alpha=renyi_alpha).items()}
    return ModelComparison(
        clean=clean, attacked=attacked,
        topk_overlap=float(metrics.topk_overlap(clean.attention, attacked.attention, k)),
        overlap_curve=np.asarray(metrics.overlap_curve(clean.attention, attacked.attention), dtype=np.float64),
        divergences=div, label_flip=clean.label != attacked.label,
        map_metrics=metrics.map_metrics(clean.attention, attacked.attention, grid, k),
    )


def _as_tensor_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    check_pixels(arr, batched=False, what="image")
    return arr.astype(np.float32)


def analyze(
    image: np.ndarray | torch.Tensor,
    config: AnalysisConfig | None = None,
    *,
    pair: ModelPair | None = None,
    progress: ProgressFn | None = None,
) -> AnalysisResult:
    """Attack ``image`` and compare the vanilla ViT with the FViT on the clean and attacked image.

    Args:
        image: (3, H, W) float pixels in [0, 1] at any size; resized (or centre-cropped, per
            ``config.image_mode``) to the classifier's input size.
        config: the settings (defaults: PGD 8/255, 10 steps; DDS at sigma 0.25, 64 samples; top-8).
        pair: loaded models (default: :func:`models.load_pair` of ``config.model``). The models
            are only read, so one cached pair can serve several threads at once.
        progress: optional ``progress(stage, fraction)`` callback for progress bars.

    The attack is crafted on the vanilla ViT (transfer setting) unless the attack is the
    adaptive ``eot_dds``. Clean and attacked FViT estimates use independent noise unless
    ``shared_noise``; the noise floor is V_k between two independent clean estimates (or its
    bootstrap estimate, ``noise_floor_estimator="bootstrap"``).

    The attacked image and the vanilla ViT's views are cached per model, keyed by the image's
    digest and every setting they depend on (:func:`clear_cache`), so changing only smoothing
    settings (sigma, N, mode, ...) skips the attack, and changing only the explanation method
    explains the cached attacked image (unless the attack reads the method, as ``topk`` does).
    The FViT estimates are cached the same way: changing only the attack smooths the attacked
    image alone, and changing only settings computed from the estimates (k, beta,
    confidence_alpha, renyi_alpha, the sensitivity check) smooths nothing. Everything is seeded,
    so a cached result is the one a fresh run would compute.
    """
    cfg = config or AnalysisConfig()
    return analyze_many(image, [cfg], pair=pair, progress=progress)[0]


def analyze_many(
    image: np.ndarray | torch.Tensor,
    configs: list[AnalysisConfig],
    *,
    pair: ModelPair | None = None,
    progress: ProgressFn | None = None,
) -> list[AnalysisResult]:
    """:func:`analyze` for each config, sharing the attack and vanilla passes between configs
    that differ only in smoothing settings (a sigma sweep crafts one attack). Results equal
    ``[analyze(image, c, pair=pair) for c in configs]``. ``progress`` spans all of them.
    """
    if not configs:
        raise SettingError("analyze_many needs at least one AnalysisConfig")
    pair = pair or load_pair(configs[0].model, classifier=configs[0].classifier, denoiser=configs[0].denoiser,
                             device=configs[0].device)
    report = progress or (lambda stage, fraction: None)
    results = []
    for i, cfg in enumerate(configs):
        share = (lambda stage, fraction, i=i: report(stage, (i + fraction) / len(configs)))
        results.append(_analyze_one(image, cfg, pair, share))
    return results


def _analyze_one(image: np.ndarray | torch.Tensor, cfg: AnalysisConfig, pair: ModelPair,
                 report: ProgressFn) -> AnalysisResult:
    timer = _Timer()
    t0 = time.perf_counter()
    clf = pair.classifier
    cfg.validate(num_patches=clf.num_patches)
    check_schedule(pair.denoiser, cfg.sigma, cfg.mode, cfg.multistep_steps)  # t* > 0, steps <= t*: before any work
    arr = _as_tensor_image(image)
    # Every draw comes from a generator of (seed, the decoded image's digest, stage, settings):
    # protocol/seeds, the same in fvit eval and certify.
    seeds = ImageSeeds(cfg.seed, image_digest(arr))
    prepared = prepare_image(arr, smoothing_size(pair, cfg.mode), mode=cfg.image_mode).astype(np.float32)
    x = torch.from_numpy(prepared)[None].to(pair.device)
    digest = image_digest(prepared)
    t0 = timer.lap("prepare", t0)

    keys = _CacheKeys.of(cfg, pair, digest, seeds)

    with torch.inference_mode():
        _check_models_finite(pair, x)
        report("attack", 0.0)
        if _overlaps(cfg):
            # The clean estimates do not need the attack: on a CPU the attack runs on its own
            # single-threaded worker while the clean samples are drawn (docs/PERFORMANCE.md).
            pending = _start_attack_stage(cfg, pair, x, keys, seeds, timer)
            t0 = time.perf_counter()
            clean_outs = _clean_stage(cfg, pair, x, keys, seeds, report)
            report("attack", 0.5)
            stage = pending()
            attacked = _attacked_stage(cfg, pair, stage.x_adv, keys, seeds, report)
            outs = [clean_outs[0], *attacked, *clean_outs[1:]]  # [clean, attacked(, clean again)]
        else:
            stage = _start_attack_stage(cfg, pair, x, keys, seeds, timer)()
            t0 = time.perf_counter()
            outs = _smoothing_stage(cfg, pair, x, stage.x_adv, seeds, report)
        _check_smoothed_finite(outs)
        t0 = timer.lap("smoothing", t0)
        perturbed = None
        if cfg.sensitivity_samples:
            report("sensitivity", 0.95)
            perturbed = _sensitivity_stage(cfg, pair, x, seeds)
            t0 = timer.lap("sensitivity", t0)

    result = _assemble(cfg, pair, prepared, digest, x, stage, outs, seeds, timer, t0, perturbed)
    report("done", 1.0)
    return result


@dataclass(frozen=True)
class _AttackStage:
    """What the attack and the vanilla ViT give for one image: independent of smoothing settings."""

    x_adv: torch.Tensor  # (1, 3, H, W) on the pair's device
    attention: np.ndarray  # (2, P) vanilla explanation of clean, attacked
    probs: np.ndarray  # (2, C)


# The attack stages of the last 64 images/settings per classifier (a few MB): the slider path.
_ATTACK_STAGES: "ModelCache[_AttackStage]" = ModelCache(64)
# Their attacked images, whatever the explanation method: a method change explains the cached
# attacked image instead of attacking again (unless the attack reads the method: topk).
_ADVERSARIAL: "ModelCache[torch.Tensor]" = ModelCache(64)


# The FViT estimates of the last images/settings per classifier (clean and attacked entries, 8
# of each on average): an analysis that changes only the attack smooths the attacked image alone,
# and one that changes only what is computed from the estimates (k, beta, the confidence and
# Renyi levels, the sensitivity check) smooths nothing. Fewer entries than the attack stages:
# with the bootstrap, each keeps its N per-sample maps.
_ESTIMATES: "ModelCache[list[SmoothedOutput]]" = ModelCache(16)

# Settings that only the attack reads: the clean estimates are the same whatever they are.
_ATTACK_FIELDS: frozenset[str] = frozenset({"attack", "eps", "steps", "attack_params"})
# Settings that no smoothing call of the overlapping path reads (pipeline._overlaps: no early
# stopping, whose rule reads k): the metrics, certificates and sensitivity stage, computed afresh.
_ESTIMATE_FREE_FIELDS: frozenset[str] = frozenset({"k", "beta", "confidence_alpha", "renyi_alpha",
                                                   "sensitivity_samples", "sensitivity_radius", "sensitivity_norm"})


def clear_cache(*, attacks: bool = True, estimates: bool = True) -> None:
    """Forget the cached attacks (attack stages and their attacked images) and FViT estimates, or
    one kind of them (benchmarks time cold analyses, a new sigma with the attack cached, or a new
    attack, with it)."""
    if attacks:
        _ATTACK_STAGES.clear()
        _ADVERSARIAL.clear()
    if estimates:
        _ESTIMATES.clear()


@dataclass(frozen=True)
class _CacheKeys:
    """The cache keys of one analysis, derived once (the weights' fingerprint walks every tensor).

    - ``adversarial``: what the attacked image depends on: the image, the attack with its resolved
      parameters (which hold the explanation settings when the attack reads them:
      registry.attack_arguments), the seed and the models;
    - ``attack``: the attack stage's: that, and the explanation settings of the vanilla views;
    - ``estimates``: what the FViT estimates of the overlapping path depend on: the image, every
      setting but the attack's and the estimate-free ones (a superset of what the smoothing calls
      read, so a hit is always what a fresh computation gives), the precision the networks run
      in, and the models. None off that path (_overlaps), whose estimates are not cached.
    """

    adversarial: tuple
    attack: tuple
    estimates: tuple | None

    @classmethod
    def of(cls, cfg: AnalysisConfig, pair: ModelPair, digest: str, seeds: ImageSeeds) -> "_CacheKeys":
        models = _models_key(pair)
        params = json.dumps(_plain(get_attack(cfg.attack).resolve(cfg.attack_arguments())), sort_keys=True, default=str)
        # seeds.image: two decoded images that prepare to the same pixels still get their own seeds.
        adversarial = (digest, seeds.image, cfg.attack, params, cfg.seed, *models)
        estimates = None
        if _overlaps(cfg):
            skip = _ATTACK_FIELDS | _ESTIMATE_FREE_FIELDS
            settings = {name: value for name, value in cfg.to_dict().items() if name not in skip}
            estimates = (digest, seeds.image, json.dumps(settings, sort_keys=True, default=str),
                         resolve_precision(cfg.precision, pair.device, cfg.method), *models)
        return cls(adversarial, (*adversarial, cfg.method, cfg.head_fusion), estimates)


def _models_key(pair: ModelPair) -> tuple:
    denoiser = id(pair.denoiser) if pair.denoiser is not None else None
    return (denoiser, str(pair.device),
            weights_fingerprint(pair.classifier, *([pair.denoiser.unet] if pair.denoiser is not None else [])))


def _cached_estimates(pair: ModelPair, key: tuple, compute: Callable[[], list[SmoothedOutput]]) -> list[SmoothedOutput]:
    """``compute()``, or its cached value under ``key``. Copies go in and out, so results never
    alias the cache."""
    cached = _ESTIMATES.get(pair.classifier, key)
    if cached is not None:
        return copy.deepcopy(cached)
    outs = compute()
    _ESTIMATES.put(pair.classifier, key, copy.deepcopy(outs))
    return outs


def _clean_stage(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor, keys: _CacheKeys, seeds: ImageSeeds,
                 report: ProgressFn) -> list[SmoothedOutput]:
    """The clean image's estimates (:func:`_smooth_clean`), cached."""
    return _cached_estimates(pair, ("clean", *keys.estimates), lambda: _smooth_clean(cfg, pair, x, seeds, report))


def _attacked_stage(cfg: AnalysisConfig, pair: ModelPair, x_adv: torch.Tensor, keys: _CacheKeys, seeds: ImageSeeds,
                    report: ProgressFn) -> list[SmoothedOutput]:
    """The attacked image's estimate (:func:`_smooth_attacked`), cached under the clean
    estimates' key and the attack stage's (which, with the seed and the image, determines
    ``x_adv``)."""
    return _cached_estimates(pair, ("attacked", *keys.estimates, *keys.attack),
                             lambda: _smooth_attacked(cfg, pair, x_adv, seeds, report))


def _attack_seed(cfg: AnalysisConfig, seeds: ImageSeeds) -> int:
    return seeds("attack", *attack_parts(cfg.attack, get_attack(cfg.attack).resolve(cfg.attack_arguments())))


def _smoothing_parts(cfg: AnalysisConfig) -> tuple:
    return smoothing_parts(cfg.mode, cfg.sigma, cfg.method)


def _start_attack_stage(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor, keys: _CacheKeys, seeds: ImageSeeds,
                        timer: _Timer) -> Callable[[], _AttackStage]:
    """Start (or find in the cache) the attack and vanilla passes; returns a function that waits
    for them. On a CPU they run on the single-threaded worker (runtime.workers.submit_single_threaded says
    why), so the caller can smooth the clean image meanwhile; elsewhere they run now."""
    stage = _ATTACK_STAGES.get(pair.classifier, keys.attack)
    if stage is not None:
        timer.parts.setdefault("attack", 0.0)
        return lambda: stage

    def compute() -> _AttackStage:
        t0 = time.perf_counter()
        x_adv = _ADVERSARIAL.get(pair.classifier, keys.adversarial)
        if x_adv is None:
            x_adv = run_attack(cfg.attack, pair.classifier, x, params=cfg.attack_arguments(), denoiser=pair.denoiser,
                               seed=_attack_seed(cfg, seeds))
            _ADVERSARIAL.put(pair.classifier, keys.adversarial, x_adv)
        t0 = timer.lap("attack", t0)
        with torch.inference_mode():
            att_v, probs_v = vanilla(pair, torch.cat([x, x_adv]), method=cfg.method, head_fusion=cfg.head_fusion)
        timer.lap("vanilla", t0)
        computed = _AttackStage(x_adv=x_adv, attention=att_v, probs=probs_v)
        _ATTACK_STAGES.put(pair.classifier, keys.attack, computed)
        return computed

    if pair.device.type != "cpu":
        done = compute()
        return lambda: done
    future = submit_single_threaded(compute)
    return future.result


def _overlaps(cfg: AnalysisConfig) -> bool:
    """Whether the clean and the attacked image are smoothed in two calls (the clean one while the
    attack runs): always, except with early stopping (all estimates must stop at the same N) or
    shared noise (one call with the same draws for both). The choice depends on the settings
    only, never on the cache or the device, so the numbers do not either."""
    return not cfg.early_stop and not (cfg.shared_noise and cfg.mode != "denoise-only")


def faithful_vit(cfg: AnalysisConfig, pair: ModelPair) -> FaithfulViT:
    """The FViT an analysis compares with the vanilla ViT."""
    return FaithfulViT.for_run(pair, cfg.sigma, cfg.mode, cfg)


def _sample_kwargs(cfg: AnalysisConfig, report: ProgressFn, start: float, span: float) -> dict:
    """FaithfulViT.sample's arguments shared by the analysis' calls (progress mapped to [start, start + span])."""
    floor_batch = cfg.second_estimate
    return dict(method=cfg.method, head_fusion=cfg.head_fusion,
                keep_samples=cfg.bootstrap > 0 or (cfg.noise_floor and not floor_batch),
                progress=lambda done, total: report("smoothing", start + span * done / total))


def _smooth_clean(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor, seeds: ImageSeeds,
                  report: ProgressFn) -> list[SmoothedOutput]:
    """The two-call path's first call (_overlaps): [clean] or, with the independent noise floor,
    [clean, clean again], from the "clean" stage's generator."""
    batch = torch.cat([x, x] if cfg.second_estimate else [x]).cpu()
    return faithful_vit(cfg, pair).sample(batch, cfg.n_samples, generator=seeds.generator("clean", *_smoothing_parts(cfg)),
                                          **_sample_kwargs(cfg, report, 0.1, 0.5))


def _smooth_attacked(cfg: AnalysisConfig, pair: ModelPair, x_adv: torch.Tensor, seeds: ImageSeeds,
                     report: ProgressFn) -> list[SmoothedOutput]:
    """The two-call path's second call: [attacked], from the "attacked" stage's generator
    (independent of the clean draws, whatever their count). As fvit eval does."""
    generator = seeds.generator("attacked", *_smoothing_parts(cfg),
                                *attack_parts(cfg.attack, get_attack(cfg.attack).resolve(cfg.attack_arguments())))
    return faithful_vit(cfg, pair).sample(x_adv.cpu(), cfg.n_samples, generator=generator,
                                          **_sample_kwargs(cfg, report, 0.6, 0.35))


def _smoothing_stage(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor, x_adv: torch.Tensor,
                     seeds: ImageSeeds, report: ProgressFn) -> list[SmoothedOutput]:
    """The one-call path (early stopping or shared noise, see _overlaps): [clean, attacked] or,
    with the independent noise floor, [clean, attacked, clean again].

    One smoothing call for all of them, so their samples share forward batches; early stopping
    then stops all of them at the same N.
    """
    generator = seeds.generator("clean", *_smoothing_parts(cfg))
    floor_batch = cfg.second_estimate
    batch = torch.cat([x, x_adv, x] if floor_batch else [x, x_adv]).cpu()
    noise = None
    if cfg.shared_noise and cfg.mode != "denoise-only":
        noise = torch.randn((cfg.n_samples, *x.shape[1:]), generator=seeds.generator("noise", *_smoothing_parts(cfg)))
        noise *= cfg.sigma
    rule = EarlyStop(k=cfg.k, alpha=cfg.early_stop_alpha) if cfg.early_stop else None
    fvit, kwargs = faithful_vit(cfg, pair), dict(_sample_kwargs(cfg, report, 0.15, 0.8), generator=generator)
    if noise is None:
        return fvit.sample(batch, cfg.n_samples, early_stop=rule, **kwargs)
    # Common random numbers: the same draws for clean and attacked; the floor gets fresh ones,
    # as many as the (possibly early-stopped) pair got.
    outs = fvit.sample(batch[:2], cfg.n_samples, noise=noise, early_stop=rule, **kwargs)
    if floor_batch:
        kwargs["generator"] = seeds.generator("floor", *_smoothing_parts(cfg))
        outs += fvit.sample(batch[2:], outs[0].n_samples, **kwargs)
    return outs


def _sensitivity_stage(cfg: AnalysisConfig, pair: ModelPair, x: torch.Tensor, seeds: ImageSeeds
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Explanations at M perturbed copies of the clean image: (vanilla (M, P), FViT (M, P)).

    One batched vanilla pass and one smoothing call over the M images (each n_samples draws);
    the ball draws and the smoothing noise come from their own seeded generators.
    """
    draws = seeds.generator("sensitivity-draws")
    images = ball_perturbations(x, cfg.sensitivity_samples, cfg.sensitivity_radius, cfg.sensitivity_norm, draws)
    att_v, _ = vanilla(pair, images, method=cfg.method, head_fusion=cfg.head_fusion)
    kwargs = dict(_sample_kwargs(cfg, lambda stage, fraction: None, 0.0, 1.0), keep_samples=False)
    outs = faithful_vit(cfg, pair).sample(images.cpu(), cfg.n_samples,
                                          generator=seeds.generator("sensitivity", *_smoothing_parts(cfg)), **kwargs)
    return att_v, np.stack([out.attention for out in outs])


def _assemble(cfg: AnalysisConfig, pair: ModelPair, prepared: np.ndarray, digest: str, x: torch.Tensor,
              stage: _AttackStage, outs: list[SmoothedOutput], seeds: ImageSeeds, timer: _Timer, t0: float,
              perturbed: tuple[np.ndarray, np.ndarray] | None = None) -> AnalysisResult:
    clf, names = pair.classifier, pair.classifier.class_names
    x_adv = stage.x_adv
    clean_s, adv_s = outs[0], outs[1]
    second = outs[2] if len(outs) > 2 else None
    att_v, probs_v = stage.attention.copy(), stage.probs.copy()  # results never alias the cache
    grid = clf.grid_size
    vanilla_cmp = _compare(_view(probs_v[0], att_v[0], names), _view(probs_v[1], att_v[1], names), cfg.k,
                           cfg.renyi_alpha, grid)
    fvit_cmp = _compare(_view(clean_s.probs, clean_s.attention, names), _view(adv_s.probs, adv_s.attention, names),
                        cfg.k, cfg.renyi_alpha, grid)
    # The bootstrap stage's generators, one per purpose (protocol/seeds; fvit eval uses the same).
    parts = _smoothing_parts(cfg)
    pairs = floor_pairs(cfg, clean_s, second, seeds.rng("bootstrap", *parts, "pairs"))
    if perturbed is not None:
        vanilla_cmp.sensitivity = sensitivity(att_v[0], perturbed[0])
        floor_changes = None if pairs is None else relative_change(pairs[0], pairs[1])
        fvit_cmp.sensitivity = {**sensitivity(clean_s.attention, perturbed[1]),
                                "floor": None if floor_changes is None else float(floor_changes.mean())}
    ci = None
    if cfg.bootstrap > 0 and clean_s.samples_attention is not None and clean_s.n_samples > 1:
        ci = bootstrap_overlap(clean_s.samples_attention, adv_s.samples_attention, cfg.k, cfg.bootstrap,
                               seeds.rng("bootstrap", *parts, "interval"))
    floor, floor_ci = noise_floor_estimate(cfg, clean_s, second, seeds.rng("bootstrap", *parts, "floor"))
    delta = (x_adv - x).flatten()
    l2 = float(delta.norm(p=2))
    # Cohen's CERTIFY wants a class guess independent of the estimation counts (SELECTION_SOURCES):
    # the second clean estimate's votes when there is one, else the vanilla clean prediction. Both
    # cost no extra samples.
    if second is not None:
        selection, source = second.votes, "second-estimate"
    else:
        selection, source = np.eye(len(probs_v[0]), dtype=np.int64)[int(np.argmax(probs_v[0]))], "vanilla-prediction"
    certs = certificates(cfg, clean_s, selection, source, adv_s, l2, int(np.prod(prepared.shape)), clf.num_patches)
    faithful = FaithfulDetails(
        mode=cfg.mode, sigma=cfg.sigma, t_star=clean_s.t_star, n_samples=clean_s.n_samples,
        precision=resolve_precision(cfg.precision, pair.device, cfg.method),
        noise_floor_estimator=cfg.noise_floor_estimator if floor is not None else None,
        topk_overlap_floor=floor, topk_overlap_ci=ci, topk_overlap_floor_ci=floor_ci,
        votes_clean=clean_s.votes, votes_attacked=adv_s.votes,
        attention_se_clean=clean_s.attention_se, attention_se_attacked=adv_s.attention_se,
        certified=certs, denoised_sample=clean_s.denoised_sample,
        map_metrics_floor=map_metrics_floor(pairs, grid, cfg.k), stopped_early=bool(clean_s.stopped_early),
    )
    timer.lap("metrics", t0)
    x_np, adv_np = x[0].cpu().numpy().copy(), x_adv[0].cpu().numpy().copy()
    views = resize_pixels(torch.cat([x, x_adv]).float().cpu(), clf.img_size).numpy()
    attack_info = {"name": cfg.attack, "params": _plain(get_attack(cfg.attack).resolve(cfg.attack_arguments())),
                   "linf": float(delta.abs().max()), "l2": l2, "crafted_on": "fvit" if cfg.attack == "eot_dds" else "vanilla"}
    result = AnalysisResult(
        config=cfg, class_names=tuple(names), grid_size=clf.grid_size, image_digest=digest,
        clean_image=x_np, attacked_image=adv_np, attack=attack_info, vanilla=vanilla_cmp, fvit=fvit_cmp,
        faithful=faithful, timing=timer.finish(), clean_view=views[0].copy(), attacked_view=views[1].copy(),
    )
    _check_finite(result)
    return result


def _plain(values: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}


def _check_models_finite(pair: ModelPair, x: torch.Tensor) -> None:
    """One cheap forward pass of the classifier on the clean image before any work: a classifier
    that returns NaN or infinity is named in the error instead of surfacing as a NaN metric later.
    The denoiser is checked on its first batch of draws (FaithfulViT.sample), which costs no
    extra forward pass."""
    if not bool(torch.isfinite(pair.classifier(x)).all()):
        raise ModelLoadError(f"the classifier returned NaN or infinite logits for this image: {NON_FINITE_HINT}")


def _check_smoothed_finite(outs: list[SmoothedOutput]) -> None:
    for out in outs:
        if not (np.isfinite(out.probs).all() and np.isfinite(out.attention).all()):
            raise ModelLoadError("the smoothed model produced NaN or infinite values on noisy inputs; the classifier or "
                             "denoiser is numerically unstable there (check its weights, or try a smaller sigma)")


def _check_finite(result: AnalysisResult) -> None:
    """Refuse to return NaN or infinity: a model that produced them must be reported, not plotted."""
    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{where}.{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                walk(value, f"{where}[{i}]")
        elif isinstance(obj, float) and not math.isfinite(obj):
            raise ModelLoadError(f"the models produced a non-finite value at {where}; check the model weights and input")

    walk(result.to_json(), "result")
