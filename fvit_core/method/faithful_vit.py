"""The Faithful ViT (FViT): a ViT smoothed by Denoised Diffusion Smoothing, as one object.

docs/METHOD.md, sections 3 and 5. Shaped like Cohen et al.'s ``Smooth`` (locuslab/smoothing): it
is built from its parts (a base classifier whose first layer normalises pixels, a denoiser or
none, the noise level sigma in pixel units, the mode) and offers

    sample(x, n)              Monte Carlo estimates of every image: w~(x), y~(x), votes, SEs
    explain(x, n, method)     the FViT explanation w~(x) of one image
    predict(x, n, alpha)      Cohen's PREDICT (ABSTAIN = -1)
    certify(x, n0, n, alpha)  Cohen's CERTIFY: (class, L2 radius in pixel units)
    noisy_logits(x, n)        differentiable logits on n noisy copies (the EOT attack's expectation)

One draw, for x in [0, 1] in the smoothing space (the denoiser's size, method.pixel_space):

    delta ~ N(0, sigma^2 I)                 pixel-space noise, drawn outside every model
    x_t   = sqrt(abar*) (2 (x + delta) - 1)  with t*: (1 - abar*) / (4 abar*) ~ sigma^2
    x0    = denoised estimate of x          one shot (dds) or DDPM steps (multistep)
    p_i, w_i = softmax and explanation of the ViT on x0

Modes: ``dds`` (the FViT); ``rs`` (randomized smoothing: the ViT sees x + delta clipped to
[0, 1], post-processing of the Gaussian mechanism, so the guarantees hold); ``denoise-only`` (no
noise, one deterministic denoising pass from t*); ``multistep`` (ancestral DDPM steps from t*).

How draws are batched, threaded and in which precision the networks run is the
:class:`~fvit_core.runtime.strategy.Runtime`'s business, never the method's: the noise is drawn
in the calling thread in sample order, so the numbers do not depend on the runtime beyond float
rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from fvit_core.data.pixels import check_pixels
from fvit_core.errors import NON_FINITE_HINT, InputError, ModelLoadError, SettingError
from fvit_core.explanations.attention import EXPLANATION_METHODS, HEAD_FUSIONS, explain
from fvit_core.method import certify as cohen
from fvit_core.method.denoise import multistep_denoise, one_shot_denoise, timestep_for_sigma
from fvit_core.method.monte_carlo import EarlyStop, MonteCarloSums, SmoothedOutput
from fvit_core.models import Denoiser, ModelPair, PixelViT
from fvit_core.protocol.settings import RunFields
from fvit_core.runtime.precision import PRECISIONS, models_in_precision
from fvit_core.runtime.strategy import Runtime
from fvit_core.runtime.workers import map_in_order

SMOOTHING_MODES: tuple[str, ...] = ("dds", "rs", "denoise-only", "multistep")
ABSTAIN = cohen.ABSTAIN

ProgressFn = Callable[[int, int], None]


class Certificate(NamedTuple):
    """Cohen's CERTIFY for one image: the class (or ABSTAIN), its certified L2 radius in pixel
    units (0 when abstaining), and the estimation samples' estimate (for the top-k radius)."""

    prediction: int
    radius: float
    estimate: SmoothedOutput


def base_input(denoiser: Denoiser | None, noisy: Tensor, mode: str, t_star: int | None, steps: int,
               generator: torch.Generator | None) -> Tensor:
    """The base classifier's input for noisy pixels (B, 3, H, W) x + delta: the denoised estimate
    x0 (dds, denoise-only, multistep) or the clipped noisy image (rs), float pixels in [0, 1]
    still in the smoothing space (the ViT resizes them as its first layer)."""
    if mode == "rs":
        return noisy.clamp(0.0, 1.0)
    if mode == "multistep":
        step_generator = generator if generator is not None and noisy.device.type == "cpu" else None
        return multistep_denoise(denoiser, noisy, t_star, n_steps=steps, generator=step_generator)
    return one_shot_denoise(denoiser, noisy, t_star)


class FaithfulViT:
    """A smoothed ViT: ``classifier`` on denoised noisy copies of the input (module docstring).

    Args:
        classifier: the base ViT (pixels in [0, 1]; normalisation and resize are its first layer).
        denoiser: the DDPM denoiser; None only for ``mode="rs"``.
        sigma: the noise level in [0, 1] pixel units (denoise-only uses it to choose t*).
        mode: one of :data:`SMOOTHING_MODES`.
        multistep_steps: denoising steps of the ``multistep`` mode.
        runtime: how the sample loop runs (precision, batching, CPU workers).
    """

    def __init__(self, classifier: PixelViT, denoiser: Denoiser | None, sigma: float, *, mode: str = "dds",
                 multistep_steps: int = 10, runtime: Runtime | None = None):
        if mode not in SMOOTHING_MODES:
            raise SettingError(f"unknown smoothing mode {mode!r}; choose one of {', '.join(SMOOTHING_MODES)}")
        if mode != "rs" and denoiser is None:
            raise SettingError(f"mode {mode!r} needs a denoiser; load a pair with one or use mode 'rs'")
        if mode != "denoise-only" and not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma > 0):
            raise SettingError(f"sigma must be a positive number of pixel units (e.g. 0.25), got {sigma!r}")
        self.classifier, self.denoiser, self.sigma, self.mode = classifier, denoiser, sigma, mode
        self.multistep_steps = multistep_steps
        self.runtime = runtime or Runtime()
        # denoise-only still uses sigma to choose the timestep it denoises from.
        self.t_star = None if mode == "rs" else timestep_for_sigma(denoiser.alphas_cumprod, sigma)

    @classmethod
    def from_pair(cls, pair: ModelPair, sigma: float, **kwargs) -> "FaithfulViT":
        """The FViT of a loaded classifier/denoiser pair."""
        return cls(pair.classifier, pair.denoiser, sigma, **kwargs)

    @classmethod
    def for_run(cls, pair: ModelPair, sigma: float, mode: str, run: RunFields) -> "FaithfulViT":
        """The FViT a run's settings describe (an analysis, fvit eval's setting, fvit certify): the
        pair at ``sigma`` in ``mode``, with the run's multistep steps and runtime."""
        return cls.from_pair(pair, sigma, mode=mode, multistep_steps=run.multistep_steps, runtime=run.runtime())

    @property
    def device(self) -> torch.device:
        return self.classifier.mean.device

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def draws_per_image(self, n_samples: int) -> int:
        """N for ``n_samples`` asked: 1 for the deterministic denoise-only mode."""
        return 1 if self.mode == "denoise-only" else n_samples

    # -- the method ------------------------------------------------------------------------

    def model_input(self, noisy: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The base classifier's input for noisy pixels x + delta (B, 3, H, W): :func:`base_input`."""
        return base_input(self.denoiser, noisy, self.mode, self.t_star, self.multistep_steps, generator)

    def noisy_logits(self, x: Tensor, n: int) -> Tensor:
        """Differentiable logits (n * B, C) of the ViT on n noisy copies of x (B, 3, H, W), draw
        after draw (row i * B + b is draw i of image b). The noise comes from torch's global
        generator on x's device (seed it, as the attacks do); the gradient flows to x."""
        noisy = x.unsqueeze(0) + self.sigma * torch.randn((n, *x.shape), device=x.device)
        return self.classifier(self.model_input(noisy.flatten(0, 1)))

    def sample(self, images: Tensor, n_samples: int, *, method: str = "raw", head_fusion: str = "mean",
               generator: torch.Generator | None = None, noise: Tensor | None = None, keep_samples: bool = False,
               early_stop: EarlyStop | None = None, progress: ProgressFn | None = None) -> list[SmoothedOutput]:
        """Monte Carlo estimates for every image of ``images`` (B, 3, H, W) in [0, 1]: one
        :class:`SmoothedOutput` each, with ``n_samples`` draws per image.

        ``noise`` (N, 3, H, W) in pixel units, if given, is used for every image (common random
        numbers); otherwise each image gets independent draws from ``generator``, image after
        image (with ``early_stop``: in rounds of ``check_every`` samples per image, and every
        image stops at the same N). ``keep_samples`` keeps the (N, P) per-sample maps (the
        bootstrap needs them); otherwise memory does not grow with N. ``progress(done, total)``
        is called after every forward batch.
        """
        _check_sampling(images, n_samples, method, head_fusion, early_stop)
        n = self.draws_per_image(n_samples)
        if noise is not None and tuple(noise.shape) != (n, *images.shape[1:]):
            raise SettingError(f"shared noise must be ({n}, {', '.join(map(str, images.shape[1:]))}), "
                             f"got {tuple(noise.shape)}")
        draw = _Draw.build(self, images, noise, method, head_fusion, generator)
        sums = MonteCarloSums(len(images), self.classifier.num_patches, self.num_classes, keep_samples)
        looks = early_stop.checkpoints(n) if early_stop is not None and self.mode != "denoise-only" else []
        z = early_stop.z(n) if looks else 0.0
        total, done, drawn, stopped = len(images) * n, 0, 0, False
        for upto in sorted({*looks, n}):
            batches = self.runtime.forward_batches(len(images), drawn, upto - drawn, self.device, draw.dtype)
            jobs = _jobs(batches, images.shape[1:], draw=self.mode != "denoise-only" and noise is None,
                         generator=generator)
            for image_idx, attention, probs, firsts in map_in_order(draw, jobs, self.runtime.workers(
                    self.device, self.mode)):
                sums.add(image_idx, attention, probs, firsts)
                done += len(image_idx)
                if progress is not None:
                    progress(done, total)
            drawn = upto
            if upto in looks and sums.settled(drawn, early_stop, z):
                stopped = True
                if progress is not None:
                    progress(total, total)
                break
        return sums.finish(drawn, self.t_star, stopped)

    def explain(self, x: Tensor, n: int, method: str = "raw", *, head_fusion: str = "mean",
                generator: torch.Generator | None = None) -> SmoothedOutput:
        """The FViT explanation of one image x (3, H, W) or (1, 3, H, W): w~(x) with its standard
        error, and the smoothed prediction, from n draws."""
        if x.ndim == 4 and x.shape[0] != 1 or x.ndim not in (3, 4):
            raise InputError(f"explain, predict and certify take one image (3, H, W), got shape {tuple(x.shape)}; "
                             "sample() takes a batch")
        return self.sample(x.reshape(1, *x.shape[-3:]), n, method=method, head_fusion=head_fusion,
                           generator=generator)[0]

    def predict(self, x: Tensor, n: int, alpha: float, *, generator: torch.Generator | None = None) -> int:
        """Cohen's PREDICT on one image: the top class of n draws' votes, or ABSTAIN when a
        binomial test cannot separate it from the runner-up at level ``alpha``."""
        return cohen.predict(self.explain(x, n, generator=generator).votes, alpha)

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, *, method: str = "raw", head_fusion: str = "mean",
                generator: torch.Generator | None = None) -> Certificate:
        """Cohen's CERTIFY on one image: the class guessed from n0 selection draws, certified
        with radius sigma * Phi^-1(p_A lower bound) from n estimation draws (level ``alpha``).
        With probability >= 1 - alpha over the draws, the smoothed classifier's class is
        constant within that L2 ball (pixel units). The estimation draws also give the FViT
        explanation for ``method`` (for the top-k radius)."""
        selection = self.explain(x, n0, generator=generator)  # only its votes are used
        estimate = self.explain(x, n, method, head_fusion=head_fusion, generator=generator)
        prediction, radius = cohen.certify_counts(selection.votes, estimate.votes, self.sigma, alpha)
        return Certificate(int(prediction), float(radius), estimate)


def smooth(pair: ModelPair, images: Tensor, *, sigma: float, n_samples: int, mode: str = "dds", batch_size: int = 256,
           multistep_steps: int = 10, precision: str = "float32", **sample_kwargs) -> list[SmoothedOutput]:
    """The functional form of ``FaithfulViT.from_pair(pair, sigma, ...).sample(images, n_samples, ...)``."""
    fvit = FaithfulViT.from_pair(pair, sigma, mode=mode, multistep_steps=multistep_steps,
                                 runtime=Runtime(precision=precision, batch_size=batch_size))
    return fvit.sample(images, n_samples, **sample_kwargs)


def _check_sampling(images: Tensor, n_samples: int, method: str, head_fusion: str,
                    early_stop: EarlyStop | None) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise SettingError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
    if method not in EXPLANATION_METHODS:
        raise SettingError(f"unknown explanation method {method!r}; choose one of {', '.join(EXPLANATION_METHODS)}")
    if head_fusion not in HEAD_FUSIONS:
        raise SettingError(f"unknown head fusion {head_fusion!r}; choose one of {', '.join(HEAD_FUSIONS)}")
    if early_stop is not None and not isinstance(early_stop, EarlyStop):
        raise SettingError(f"early_stop must be an EarlyStop rule or None, got {type(early_stop).__name__}")
    check_pixels(images, batched=True, what="images")


@dataclass(frozen=True)
class _Job:
    image_idx: Tensor
    sample_idx: Tensor
    normal: Tensor | None  # standard normal draws for this batch (None: shared or no noise)


def _jobs(batches: Iterator[tuple[Tensor, Tensor]], shape: tuple[int, ...], *, draw: bool,
          generator: torch.Generator | None) -> Iterator[_Job]:
    """The noise of each batch is drawn here, in the calling thread and in batch order, so the
    numbers are reproducible whichever worker runs the batch."""
    for image_idx, sample_idx in batches:
        normal = torch.randn((len(image_idx), *shape), generator=generator) if draw else None
        yield _Job(image_idx, sample_idx, normal)


@dataclass(frozen=True)
class _Draw:
    """One forward batch of draws: x + delta -> base input -> ViT (read-only, shared by workers)."""

    fvit: FaithfulViT
    classifier: PixelViT  # in the runtime's precision
    denoiser: Denoiser | None
    images: Tensor  # (B, 3, H, W) float32, CPU
    shared: Tensor | None  # (N, 3, H, W) common random numbers, pixel units
    method: str
    head_fusion: str
    dtype: torch.dtype
    generator: torch.Generator | None

    @classmethod
    def build(cls, fvit: FaithfulViT, images: Tensor, noise: Tensor | None, method: str, head_fusion: str,
              generator: torch.Generator | None) -> "_Draw":
        precision = fvit.runtime.precision_for(fvit.device, method)  # resolved once per call
        classifier, denoiser = models_in_precision(fvit.classifier, fvit.denoiser, precision)
        shared = None if noise is None else noise.detach().float().cpu()
        return cls(fvit, classifier, denoiser, images.detach().float().cpu(), shared, method, head_fusion,
                   PRECISIONS[precision], generator)

    def __call__(self, job: _Job) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """(image index (b,), attention (b, P), probabilities (b, C), {image: its first model input})."""
        fvit = self.fvit
        with torch.inference_mode():
            x = self.images[job.image_idx]
            if job.normal is not None:
                x = x + job.normal * fvit.sigma
            elif self.shared is not None:
                x = x + self.shared[job.sample_idx]
            inputs = base_input(self.denoiser, x.to(fvit.device), fvit.mode, fvit.t_star, fvit.multistep_steps,
                                self.generator)
            if fvit.mode != "rs" and not bool(torch.isfinite(inputs).all()):
                # Named here, on the first batch, rather than as a NaN estimate after all of them.
                raise ModelLoadError(f"the denoiser returned NaN or infinite pixels for the noisy copies: {NON_FINITE_HINT}")
            exp = explain(self.classifier, inputs.to(self.dtype), method=self.method, head_fusion=self.head_fusion)
            probs = torch.softmax(exp.logits.float(), dim=-1)
            firsts = {int(job.image_idx[row]): inputs[row].float().cpu().numpy()
                      for row in torch.nonzero(job.sample_idx == 0).flatten().tolist()}
            return (job.image_idx.numpy(), exp.attention.double().cpu().numpy(), probs.double().cpu().numpy(),
                    firsts)
