"""One analysis: attack an image, then compare the vanilla ViT with the Faithful ViT (DDS).

:func:`analyze` is the single call that the dashboard and the command line share. It returns an
:class:`AnalysisResult` of plain numpy arrays and numbers (no tensors, no modules), which
:meth:`AnalysisResult.to_json` turns into the documented JSON.

The steps: prepare the image in the smoothing space (ModelPair.smoothing_size); attack it and
run the vanilla ViT (the attack stage); sample the FViT on the clean and the attacked image
(method.faithful_vit, under the settings' runtime); compare (fvit_core.metrics), estimate the
noise floor (analysis.noise_floor) and the guarantees (analysis.certificates). On a CPU the
attack runs on a single-threaded worker while the clean image is sampled (runtime.workers). With
an :class:`~fvit_core.analysis.cache.AnalysisCache`, stages computed by an earlier analysis are
reused.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from fvit_core import metrics
from fvit_core.analysis.cache import AnalysisCache
from fvit_core.analysis.certificates import certificates
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.noise_floor import bootstrap_overlap, floor_pairs, map_metrics_floor, noise_floor_estimate
from fvit_core.analysis.result import AnalysisResult, FaithfulDetails, ImageView, ModelComparison
from fvit_core.attacks.runner import run_attack
from fvit_core.attacks.settings import ResolvedAttack
from fvit_core.data.images import fit_notice, image_digest, prepare_image
from fvit_core.data.pixels import check_pixels, resize_pixels
from fvit_core.errors import NON_FINITE_HINT, ModelLoadError, SettingError
from fvit_core.explanations.sensitivity import ball_perturbations, relative_change, sensitivity
from fvit_core.method.denoise import check_schedule
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.method.monte_carlo import EarlyStop, SmoothedOutput
from fvit_core.method.vanilla import vanilla
from fvit_core.models import ModelPair
from fvit_core.protocol.seeds import ImageSeeds, smoothing_parts
from fvit_core.runtime.precision import weights_fingerprint
from fvit_core.runtime.sampling import scheme_normals
from fvit_core.runtime.workers import submit_single_threaded

__all__ = ["AnalysisCache", "AnalysisConfig", "AnalysisResult", "ProgressFn", "analyze", "analyze_many"]

ProgressFn = Callable[[str, float], None]

# Settings that only the attack reads: the clean estimates are the same whatever they are.
_ATTACK_FIELDS: frozenset[str] = frozenset({"attack", "eps", "steps", "attack_params"})
# Settings that no smoothing call of the overlapping path reads (_overlaps: no early stopping,
# whose rule reads k): the metrics, certificates and sensitivity stage, computed afresh.
_ESTIMATE_FREE_FIELDS: frozenset[str] = frozenset({"k", "beta", "confidence_alpha", "renyi_alpha",
                                                   "sensitivity_samples", "sensitivity_radius", "sensitivity_norm"})


def analyze(image: np.ndarray | torch.Tensor, config: AnalysisConfig | None = None, *, pair: ModelPair | None = None,
            progress: ProgressFn | None = None, cache: AnalysisCache | None = None) -> AnalysisResult:
    """Attack ``image`` and compare the vanilla ViT with the FViT on the clean and attacked image.

    Args:
        image: (3, H, W) float pixels in [0, 1] at any size; resized (or centre-cropped, per
            ``config.image_mode``) to the smoothing space of the pair.
        config: the settings (defaults: PGD 8/255, 10 steps; DDS at sigma 0.25, 32 antithetic samples; top-8).
        pair: loaded models (default: the models ``config.models`` names). The models are only
            read, so one cached pair can serve several threads at once.
        progress: optional ``progress(stage, fraction)`` callback for progress bars.
        cache: stages earlier analyses computed (analysis.cache); None computes everything.

    The attack is crafted on the vanilla ViT (transfer setting) unless the attack is the
    adaptive ``eot_dds``. Clean and attacked FViT estimates use independent noise unless
    ``shared_noise``; the noise floor is V_k between two independent clean estimates (or its
    bootstrap estimate, ``noise_floor_estimator="bootstrap"``).

    With a cache, the attacked image and the vanilla ViT's views are reused when the image, the
    attack, the seed and the explanation are unchanged (a smoothing change skips the attack; a
    method change explains the cached attacked image unless the attack reads the method, as
    ``topk`` does), and the FViT estimates when only the attack changed (the attacked image alone
    is smoothed) or only settings computed from them (k, beta, confidence_alpha, renyi_alpha,
    the sensitivity check: nothing is smoothed). Everything is seeded, so a reused stage is the
    one a fresh run would compute.
    """
    return analyze_many(image, [config or AnalysisConfig()], pair=pair, progress=progress, cache=cache)[0]


def analyze_many(image: np.ndarray | torch.Tensor, configs: list[AnalysisConfig], *, pair: ModelPair | None = None,
                 progress: ProgressFn | None = None, cache: AnalysisCache | None = None) -> list[AnalysisResult]:
    """:func:`analyze` for each config, sharing the attack and vanilla passes between configs
    that differ only in smoothing settings (a sigma sweep crafts one attack; without a ``cache``
    a private one lives for the length of the call). Results equal
    ``[analyze(image, c, pair=pair) for c in configs]``. ``progress`` spans all of them.
    """
    if not configs:
        raise SettingError("analyze_many needs at least one AnalysisConfig")
    pair = pair or configs[0].models.load()
    cache = cache if cache is not None else (AnalysisCache() if len(configs) > 1 else None)
    report = progress or (lambda stage, fraction: None)
    results = []
    for i, cfg in enumerate(configs):
        share = (lambda stage, fraction, i=i: report(stage, (i + fraction) / len(configs)))
        results.append(_Analysis(image, cfg, pair, share, cache).run())
    return results


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


@dataclass(frozen=True)
class _AttackStage:
    """What the attack and the vanilla ViT give for one image: independent of smoothing settings."""

    x_adv: torch.Tensor  # (1, 3, H, W) on the pair's device
    attention: np.ndarray  # (2, P) vanilla explanation of clean, attacked
    probs: np.ndarray  # (2, C)
    relevance: np.ndarray | None = None  # (2, P) signed relevances of a signed method


@dataclass(frozen=True)
class _CacheKeys:
    """The cache keys of one analysis, derived once (the weights' fingerprint walks every tensor).

    - ``adversarial``: what the attacked image depends on: the image, the attack with its resolved
      parameters (which hold the explanation settings when the attack reads them:
      AttackSpec.follows), the seed and the models;
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
    def of(cls, cfg: AnalysisConfig, pair: ModelPair, digest: str, seeds: ImageSeeds, attack: ResolvedAttack,
           precision: str) -> "_CacheKeys":
        models = _models_key(pair)
        params = json.dumps(attack.params, sort_keys=True, default=str)
        # seeds.image: two decoded images that prepare to the same pixels still get their own seeds.
        adversarial = (digest, seeds.image, attack.name, params, cfg.seed, *models)
        estimates = None
        if _overlaps(cfg):
            skip = _ATTACK_FIELDS | _ESTIMATE_FREE_FIELDS
            settings = {name: value for name, value in cfg.to_dict().items() if name not in skip}
            estimates = (digest, seeds.image, json.dumps(settings, sort_keys=True, default=str), precision, *models)
        explanation = cfg.explanation
        return cls(adversarial, (*adversarial, explanation.method, explanation.head_fusion, explanation.target),
                   estimates)


def _models_key(pair: ModelPair) -> tuple:
    denoiser = id(pair.denoiser) if pair.denoiser is not None else None
    return (denoiser, str(pair.device),
            weights_fingerprint(pair.classifier, *([pair.denoiser.unet] if pair.denoiser is not None else [])))


def _overlaps(cfg: AnalysisConfig) -> bool:
    """Whether the clean and the attacked image are smoothed in two calls (the clean one while the
    attack runs): always, except with early stopping (all estimates must stop at the same N) or
    shared noise (one call with the same draws for both). The choice depends on the settings
    only, never on the cache or the device, so the numbers do not either."""
    return not cfg.early_stop.enabled and not (cfg.sampling.shared_noise and cfg.smoothing.noisy)


class _Analysis:
    """One analysis of one image: the settings, the models, the prepared image, its seeds, the
    resolved attack and the FViT, shared by the stages below."""

    def __init__(self, image: np.ndarray | torch.Tensor, cfg: AnalysisConfig, pair: ModelPair, report: ProgressFn,
                 cache: AnalysisCache | None):
        self.timer, self.cfg, self.pair, self.report, self.cache = _Timer(), cfg, pair, report, cache
        t0 = time.perf_counter()
        smoothing = cfg.smoothing
        cfg.check_model(pair.classifier.num_patches, pair.classifier.num_classes)
        # t* > 0, steps <= t*: before any work.
        check_schedule(pair.denoiser, smoothing.sigma, smoothing.mode, smoothing.multistep_steps)
        arr = _as_pixels(image)
        # Every draw comes from a generator of (seed, the decoded image's digest, stage, settings):
        # protocol/seeds, the same in fvit eval and certify.
        self.seeds = ImageSeeds(cfg.seed, image_digest(arr))
        self.original_size = (int(arr.shape[1]), int(arr.shape[2]))
        self.prepared = prepare_image(arr, pair.smoothing_size(smoothing.mode), mode=cfg.image_mode).astype(np.float32)
        self.x = torch.from_numpy(self.prepared)[None].to(pair.device)
        self.digest = image_digest(self.prepared)
        self.attack = cfg.resolved_attack()  # resolved once per analysis
        self.fvit = FaithfulViT.of(pair, smoothing, cfg.runtime)
        self.precision = self.fvit.precision_for(cfg.explanation.method)
        self.parts = smoothing_parts(smoothing.mode, smoothing.sigma, cfg.explanation.method)
        self.timer.lap("prepare", t0)

    @functools.cached_property
    def keys(self) -> _CacheKeys:
        """The cache keys, derived only when there is a cache (the fingerprint walks every weight)."""
        return _CacheKeys.of(self.cfg, self.pair, self.digest, self.seeds, self.attack, self.precision)

    def run(self) -> AnalysisResult:
        cfg = self.cfg
        with torch.inference_mode():
            _check_classifier_finite(self.pair, self.x)
            self.report("attack", 0.0)
            if _overlaps(cfg):
                # The clean estimates do not need the attack: on a CPU the attack runs on its own
                # single-threaded worker while the clean samples are drawn (docs/PERFORMANCE.md).
                pending = self._start_attack_stage()
                t0 = time.perf_counter()
                clean_outs = self._cached("clean", self._smooth_clean)
                self.report("attack", 0.5)
                stage = pending()
                # Keyed by the attack stage's key too, which with the seed and the image
                # determines x_adv.
                attacked = self._cached("attacked", lambda: self._smooth_attacked(stage.x_adv), by_attack=True)
                outs = [clean_outs[0], *attacked, *clean_outs[1:]]  # [clean, attacked(, clean again)]
            else:
                stage = self._start_attack_stage()()
                t0 = time.perf_counter()
                outs = self._smooth_together(stage.x_adv)
            _check_smoothed_finite(outs)
            t0 = self.timer.lap("smoothing", t0)
            perturbed = None
            if cfg.sensitivity.enabled:
                self.report("sensitivity", 0.95)
                perturbed = self._sensitivity_stage()
                t0 = self.timer.lap("sensitivity", t0)
        result = self._assemble(stage, outs, t0, perturbed)
        self.report("done", 1.0)
        return result

    # -- the attack stage ----------------------------------------------------------------------

    def _start_attack_stage(self) -> Callable[[], _AttackStage]:
        """Start (or find in the cache) the attack and vanilla passes; returns a function that waits
        for them. On a CPU they run on the single-threaded worker (runtime.workers.submit_single_threaded
        says why), so the caller can smooth the clean image meanwhile; elsewhere they run now."""
        cache, clf = self.cache, self.pair.classifier
        stage = cache.attack_stages.get(clf, self.keys.attack) if cache is not None else None
        if stage is not None:
            self.timer.parts.setdefault("attack", 0.0)
            return lambda: stage
        if self.pair.device.type != "cpu":
            done = self._attack_stage()
            return lambda: done
        return submit_single_threaded(self._attack_stage).result

    def _attack_stage(self) -> _AttackStage:
        t0 = time.perf_counter()
        cache, clf, explanation = self.cache, self.pair.classifier, self.cfg.explanation
        x_adv = cache.attacked_images.get(clf, self.keys.adversarial) if cache is not None else None
        if x_adv is None:
            x_adv = run_attack(self.attack.name, clf, self.x, params=self.attack.params, denoiser=self.pair.denoiser,
                               seed=self.seeds("attack", *self.attack.seed_parts))
            if cache is not None:
                cache.attacked_images.put(clf, self.keys.adversarial, x_adv)
        t0 = self.timer.lap("attack", t0)
        with torch.inference_mode():
            views = vanilla(self.pair, torch.cat([self.x, x_adv]), method=explanation.method,
                            head_fusion=explanation.head_fusion, target=explanation.target)
        self.timer.lap("vanilla", t0)
        stage = _AttackStage(x_adv=x_adv, attention=views.attention, probs=views.probs, relevance=views.relevance)
        if cache is not None:
            cache.attack_stages.put(clf, self.keys.attack, stage)
        return stage

    # -- the FViT's estimates ------------------------------------------------------------------

    def _cached(self, kind: str, compute: Callable[[], list[SmoothedOutput]], *, by_attack: bool = False
                ) -> list[SmoothedOutput]:
        """``compute()``, or its cached value under the estimates' key (and, ``by_attack``, the
        attack stage's, which with the seed and the image determines the attacked image). Copies
        go in and out, so results never alias the cache."""
        if self.cache is None:
            return compute()
        full_key = (kind, *self.keys.estimates, *(self.keys.attack if by_attack else ()))
        cached = self.cache.estimates.get(self.pair.classifier, full_key)
        if cached is not None:
            return copy.deepcopy(cached)
        outs = compute()
        self.cache.estimates.put(self.pair.classifier, full_key, copy.deepcopy(outs))
        return outs

    def _sample(self, images: torch.Tensor, generator: torch.Generator, start: float, span: float, *,
                n_samples: int | None = None, keep: bool | None = None, **kwargs: Any) -> list[SmoothedOutput]:
        """FaithfulViT.sample with the analysis' explanation (progress mapped to [start, start + span])."""
        cfg, explanation = self.cfg, self.cfg.explanation
        floor = cfg.floor
        keep = floor.bootstrap > 0 or floor.from_bootstrap if keep is None else keep
        return self.fvit.sample(images.cpu(), n_samples or cfg.sampling.n_samples, method=explanation.method,
                                head_fusion=explanation.head_fusion, target=explanation.target, generator=generator,
                                keep_samples=keep, scheme=cfg.sampling.scheme,
                                progress=lambda done, total: self.report("smoothing", start + span * done / total),
                                **kwargs)

    def _smooth_clean(self) -> list[SmoothedOutput]:
        """The two-call path's first call (_overlaps): [clean] or, with the independent noise floor,
        [clean, clean again], from the "clean" stage's generator."""
        x = self.x
        batch = torch.cat([x, x] if self.cfg.floor.second_estimate else [x])
        return self._sample(batch, self.seeds.generator("clean", *self.parts), 0.1, 0.5)

    def _smooth_attacked(self, x_adv: torch.Tensor) -> list[SmoothedOutput]:
        """The two-call path's second call: [attacked], from the "attacked" stage's generator
        (independent of the clean draws, whatever their count). As fvit eval does."""
        generator = self.seeds.generator("attacked", *self.parts, *self.attack.seed_parts)
        return self._sample(x_adv, generator, 0.6, 0.35)

    def _smooth_together(self, x_adv: torch.Tensor) -> list[SmoothedOutput]:
        """The one-call path (early stopping or shared noise, see _overlaps): [clean, attacked] or,
        with the independent noise floor, [clean, attacked, clean again].

        One smoothing call for all of them, so their samples share forward batches; early stopping
        then stops all of them at the same N.
        """
        cfg, x = self.cfg, self.x
        generator = self.seeds.generator("clean", *self.parts)
        floor_batch = cfg.floor.second_estimate
        batch = torch.cat([x, x_adv, x] if floor_batch else [x, x_adv])
        noise = None
        if cfg.sampling.shared_noise and cfg.smoothing.noisy:
            noise = self.fvit.sigma * scheme_normals(cfg.sampling.n_samples, tuple(x.shape[1:]),
                                                     self.seeds.generator("noise", *self.parts),
                                                     antithetic=cfg.sampling.scheme == "antithetic")
        rule = EarlyStop(k=cfg.explanation.k, alpha=cfg.early_stop.alpha) if cfg.early_stop.enabled else None
        if noise is None:
            return self._sample(batch, generator, 0.15, 0.8, early_stop=rule)
        # Common random numbers: the same draws for clean and attacked; the floor gets fresh ones,
        # as many as the (possibly early-stopped) pair got.
        outs = self._sample(batch[:2], generator, 0.15, 0.8, noise=noise, early_stop=rule)
        if floor_batch:
            outs += self._sample(batch[2:], self.seeds.generator("floor", *self.parts), 0.15, 0.8,
                                 n_samples=outs[0].n_samples)
        return outs

    def _sensitivity_stage(self) -> tuple[np.ndarray, np.ndarray]:
        """Explanations at M perturbed copies of the clean image: (vanilla (M, P), FViT (M, P)).

        One batched vanilla pass and one smoothing call over the M images (each n_samples draws);
        the ball draws and the smoothing noise come from their own seeded generators.
        """
        cfg, sens, explanation = self.cfg, self.cfg.sensitivity, self.cfg.explanation
        images = ball_perturbations(self.x, sens.samples, sens.radius, sens.norm, self.seeds.generator("sensitivity-draws"))
        att_v = vanilla(self.pair, images, method=explanation.method, head_fusion=explanation.head_fusion,
                        target=explanation.target).attention
        outs = self.fvit.sample(images.cpu(), cfg.sampling.n_samples, method=explanation.method,
                                head_fusion=explanation.head_fusion, target=explanation.target,
                                generator=self.seeds.generator("sensitivity", *self.parts), scheme=cfg.sampling.scheme)
        return att_v, np.stack([out.attention for out in outs])

    # -- the result ----------------------------------------------------------------------------

    def _assemble(self, stage: _AttackStage, outs: list[SmoothedOutput], t0: float,
                  perturbed: tuple[np.ndarray, np.ndarray] | None) -> AnalysisResult:
        cfg, clf, x, x_adv = self.cfg, self.pair.classifier, self.x, stage.x_adv
        k, names, grid = cfg.explanation.k, clf.class_names, clf.grid_size
        clean_s, adv_s = outs[0], outs[1]
        second = outs[2] if len(outs) > 2 else None
        att_v, probs_v = stage.attention.copy(), stage.probs.copy()  # results never alias the cache
        rel_v = (None, None) if stage.relevance is None else stage.relevance.copy()
        vanilla_cmp = _compare(_view(probs_v[0], att_v[0], names, rel_v[0]), _view(probs_v[1], att_v[1], names, rel_v[1]),
                               k, cfg.renyi_alpha, grid)
        fvit_cmp = _compare(_view(clean_s.probs, clean_s.attention, names, clean_s.relevance),
                            _view(adv_s.probs, adv_s.attention, names, adv_s.relevance), k, cfg.renyi_alpha, grid)
        # The bootstrap stage's generators, one per purpose (protocol/seeds; fvit eval uses the same).
        pairs = floor_pairs(cfg.floor, clean_s, second, self.seeds.rng("bootstrap", *self.parts, "pairs"))
        if perturbed is not None:
            vanilla_cmp.sensitivity = sensitivity(att_v[0], perturbed[0])
            floor_changes = None if pairs is None else relative_change(pairs[0], pairs[1])
            fvit_cmp.sensitivity = {**sensitivity(clean_s.attention, perturbed[1]),
                                    "floor": None if floor_changes is None else float(floor_changes.mean())}
        ci = None
        if cfg.floor.bootstrap > 0 and clean_s.samples_attention is not None and len(clean_s.resampling_units) > 1:
            # Resampling the independent units: the samples, or the pair means of antithetic draws.
            ci = bootstrap_overlap(clean_s.resampling_units, adv_s.resampling_units, k, cfg.floor.bootstrap,
                                   self.seeds.rng("bootstrap", *self.parts, "interval"))
        floor = noise_floor_estimate(cfg.floor, k, clean_s, second, self.seeds.rng("bootstrap", *self.parts, "floor"))
        delta = (x_adv - x).flatten()
        l2 = float(delta.norm(p=2))
        # Cohen's CERTIFY wants a class guess independent of the estimation counts (SELECTION_SOURCES):
        # the second clean estimate's votes when there is one, else the vanilla clean prediction. Both
        # cost no extra samples.
        if second is not None:
            selection, source = second.independent_votes, "second-estimate"
        else:
            selection, source = np.eye(len(probs_v[0]), dtype=np.int64)[int(np.argmax(probs_v[0]))], "vanilla-prediction"
        certs = certificates(cfg, clean_s, selection, source, adv_s, l2, int(np.prod(self.prepared.shape)),
                             clf.num_patches)
        faithful = FaithfulDetails(
            mode=cfg.smoothing.mode, sigma=cfg.smoothing.sigma, t_star=clean_s.t_star, n_samples=clean_s.n_samples,
            precision=self.precision, noise_floor_estimator=cfg.floor.estimator if floor.value is not None else None,
            topk_overlap_floor=floor.value, topk_overlap_ci=ci, topk_overlap_floor_ci=floor.ci,
            votes_clean=clean_s.votes, votes_attacked=adv_s.votes,
            attention_se_clean=clean_s.attention_se, attention_se_attacked=adv_s.attention_se,
            certified=certs, denoised_sample=clean_s.denoised_sample,
            map_metrics_floor=map_metrics_floor(pairs, grid, k), stopped_early=bool(clean_s.stopped_early),
            overlap_curve_floor=floor.curve,
        )
        self.timer.lap("metrics", t0)
        views = resize_pixels(torch.cat([x, x_adv]).float().cpu(), clf.img_size).numpy()
        attack_info = {"name": self.attack.name, "params": dict(self.attack.params), "linf": float(delta.abs().max()),
                       "l2": l2, "crafted_on": "fvit" if self.attack.name == "eot_dds" else "vanilla"}
        result = AnalysisResult(
            config=cfg, class_names=tuple(names), grid_size=clf.grid_size, image_digest=self.digest,
            clean_image=x[0].cpu().numpy().copy(), attacked_image=x_adv[0].cpu().numpy().copy(), attack=attack_info,
            vanilla=vanilla_cmp, fvit=fvit_cmp, faithful=faithful, timing=self.timer.finish(),
            clean_view=views[0].copy(), attacked_view=views[1].copy(), original_size=self.original_size,
            fit_notice=fit_notice(self.original_size, tuple(clf.img_size), cfg.image_mode),
        )
        _check_finite(result)
        return result


def _view(probs: np.ndarray, attention: np.ndarray, names: tuple[str, ...], relevance: np.ndarray | None = None
          ) -> ImageView:
    label = int(np.argmax(probs))
    return ImageView(label=label, label_name=names[label], confidence=float(probs[label]), probs=probs,
                     attention=attention, relevance=relevance)


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


def _as_pixels(image: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    check_pixels(arr, batched=False, what="image")
    return arr.astype(np.float32)


def _check_classifier_finite(pair: ModelPair, x: torch.Tensor) -> None:
    """One cheap forward pass of the classifier on the clean image before any work: a classifier
    that returns NaN or infinity is named in the error instead of surfacing as a NaN metric later.
    The denoiser is checked on its first batch of draws (FaithfulViT.draw), which costs no extra
    forward pass."""
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
