"""The Faithful ViT (FViT): a ViT smoothed by Denoised Diffusion Smoothing, as one object.

docs/METHOD.md, sections 3 and 5. Shaped like Cohen et al.'s ``Smooth`` (locuslab/smoothing): it
is built from its parts (a base classifier whose first layer normalises pixels, a denoiser or
none, the noise level sigma in pixel units, the mode) and offers

    draw(noisy)               one draw on noisy pixels x + delta: the ViT's logits and explanation
    sample(x, n)              Monte Carlo estimates of every image: w~(x), y~(x), votes, SEs
    explain(x, n, method)     the FViT explanation w~(x) of one image
    predict(x, n, alpha)      Cohen's PREDICT (ABSTAIN = -1)
    certify(x, n0, n, alpha)  Cohen's CERTIFY: (class, L2 radius in pixel units)
    noisy_logits(x, n)        differentiable logits of n draws (the EOT attack's expectation)

One draw, for x in [0, 1] in the smoothing space (the denoiser's size, ModelPair.smoothing_size):

    delta ~ N(0, sigma^2 I)                 pixel-space noise, drawn outside every model (noise)
    x_t   = sqrt(abar*) (2 (x + delta) - 1)  with t*: (1 - abar*) / (4 abar*) ~ sigma^2
    x0    = denoised estimate of x          one shot (dds) or DDPM steps (multistep)
    p_i, w_i = softmax and explanation of the ViT on x0                           (draw)

Modes: ``dds`` (the FViT); ``rs`` (randomized smoothing: the ViT sees x + delta clipped to
[0, 1], post-processing of the Gaussian mechanism, so the guarantees hold); ``denoise-only`` (no
noise, one deterministic denoising pass from t*); ``multistep`` (ancestral DDPM steps from t*).

How draws are batched, on which workers and in which precision the networks run is the
:class:`~fvit_core.runtime.strategy.Runtime`'s business (runtime.sampling), never the method's:
the noise is drawn in the calling thread in sample order, so the numbers do not depend on the
runtime beyond float rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from fvit_core.data.pixels import check_pixels
from fvit_core.errors import NON_FINITE_HINT, InputError, ModelLoadError, SettingError
from fvit_core.explanations.attention import explain
from fvit_core.explanations.settings import ExplanationSettings as Explain
from fvit_core.explanations.settings import check_head_fusion, check_method, float32_only
from fvit_core.method import certify as cohen
from fvit_core.method.denoise import multistep_denoise, one_shot_denoise, timestep_for_sigma
from fvit_core.method.monte_carlo import EarlyStop, MonteCarloSums, SmoothedOutput
from fvit_core.method.settings import SamplingSettings, SmoothingSettings, check_draws, check_scheme
from fvit_core.models import Denoiser, ModelPair, PixelViT
from fvit_core.runtime.precision import models_in_precision
from fvit_core.runtime.sampling import Job, ProgressFn, sample_loop
from fvit_core.runtime.strategy import Runtime

ABSTAIN = cohen.ABSTAIN


class Draw(NamedTuple):
    """One batch of draws: the base classifier's inputs (B, 3, H, W) in [0, 1], its logits (B, C)
    and, when a method was asked for, its explanation (B, P) (rows sum to 1) and, for a signed
    method, the signed relevances (B, P)."""

    inputs: Tensor
    logits: Tensor
    attention: Tensor | None
    relevance: Tensor | None = None


class Certificate(NamedTuple):
    """Cohen's CERTIFY for one image: the class (or ABSTAIN), its certified L2 radius in pixel
    units (0 when abstaining), and the estimation samples' estimate (for the top-k radius)."""

    prediction: int
    radius: float
    estimate: SmoothedOutput


class FaithfulViT:
    """A smoothed ViT: ``classifier`` on denoised noisy copies of the input (module docstring).

    Args:
        classifier: the base ViT (pixels in [0, 1]; normalisation and resize are its first layer).
        denoiser: the DDPM denoiser; None only for ``mode="rs"``.
        sigma: the noise level in [0, 1] pixel units (denoise-only uses it to choose t*).
        mode: one of method.settings.SMOOTHING_MODES.
        multistep_steps: denoising steps of the ``multistep`` mode.
        runtime: how the sample loop runs (precision, batching, CPU workers); default Runtime().
    """

    def __init__(self, classifier: PixelViT, denoiser: Denoiser | None, sigma: float, *,
                 mode: str = SmoothingSettings.mode, multistep_steps: int = SmoothingSettings.multistep_steps,
                 runtime: Runtime | None = None):
        self.smoothing = SmoothingSettings(mode=mode, sigma=sigma, multistep_steps=multistep_steps)
        if mode != "rs" and denoiser is None:
            raise SettingError(f"mode {mode!r} needs a denoiser; load a pair with one or use mode 'rs'")
        self.classifier, self.denoiser, self.sigma, self.mode = classifier, denoiser, sigma, mode
        self.runtime = runtime or Runtime()
        # denoise-only still uses sigma to choose the timestep it denoises from.
        self.t_star = None if mode == "rs" else timestep_for_sigma(denoiser.alphas_cumprod, sigma)

    @classmethod
    def from_pair(cls, pair: ModelPair, sigma: float, **kwargs) -> "FaithfulViT":
        """The FViT of a loaded classifier/denoiser pair."""
        return cls(pair.classifier, pair.denoiser, sigma, **kwargs)

    @classmethod
    def of(cls, pair: ModelPair, smoothing: SmoothingSettings, runtime: Runtime | None = None) -> "FaithfulViT":
        """The FViT that smoothing settings describe, on a loaded pair."""
        return cls(pair.classifier, pair.denoiser, smoothing.sigma, mode=smoothing.mode,
                   multistep_steps=smoothing.multistep_steps, runtime=runtime)

    @property
    def device(self) -> torch.device:
        return self.classifier.mean.device

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def draws_per_image(self, n_samples: int) -> int:
        """N for ``n_samples`` asked: 1 for the deterministic denoise-only mode."""
        return self.smoothing.draws(n_samples)

    # -- one draw ------------------------------------------------------------------------------

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | None = None) -> Tensor:
        """delta ~ N(0, sigma^2 I) in pixel units, from ``generator`` (None: torch's global one)."""
        return self.sigma * torch.randn(shape, generator=generator, device=device)

    def base_input(self, noisy: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The base classifier's input for noisy pixels x + delta (B, 3, H, W): the denoised
        estimate x0 (dds, denoise-only, multistep) or the clipped noisy image (rs), float pixels in
        [0, 1] still in the smoothing space (the ViT resizes them as its first layer)."""
        if self.mode == "rs":
            return noisy.clamp(0.0, 1.0)
        if self.mode == "multistep":
            steps_generator = generator if generator is not None and noisy.device.type == "cpu" else None
            return multistep_denoise(self.denoiser, noisy, self.t_star, n_steps=self.smoothing.multistep_steps,
                                     generator=steps_generator)
        return one_shot_denoise(self.denoiser, noisy, self.t_star)

    def draw(self, noisy: Tensor, *, method: str | None = Explain.method, head_fusion: str = Explain.head_fusion,
             target: int | None = Explain.target, generator: torch.Generator | None = None,
             differentiable: bool = False) -> Draw:
        """The ViT on the base input of noisy pixels x + delta (B, 3, H, W): its logits and, for
        ``method`` (None: none), its explanation of class ``target`` (None: each draw's own
        predicted class). ``generator``: multistep's stochastic steps. ``differentiable``: keep
        both in the autograd graph of ``noisy`` (the EOT attack)."""
        inputs = self.base_input(noisy, generator)
        if self.mode != "rs" and not differentiable and not bool(torch.isfinite(inputs).all()):
            # Named here, on the first batch, rather than as a NaN estimate after all of them.
            raise ModelLoadError(f"the denoiser returned NaN or infinite pixels for the noisy copies: {NON_FINITE_HINT}")
        inputs_in_dtype = inputs.to(self.classifier.mean.dtype)
        if method is None:
            return Draw(inputs, self.classifier(inputs_in_dtype), None)
        exp = explain(self.classifier, inputs_in_dtype, method=method, head_fusion=head_fusion, target=target,
                      differentiable=differentiable)
        return Draw(inputs, exp.logits, exp.attention, exp.relevance)

    def noisy_logits(self, x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Differentiable logits (n * B, C) of n draws on each image of x (B, 3, H, W), draw after
        draw (row i * B + b is draw i of image b). The noise comes from ``generator`` or torch's
        global generator on x's device (seed it, as the attacks do); the gradient flows to x."""
        noisy = x.unsqueeze(0) + self.noise((n, *x.shape), generator, x.device)
        return self.draw(noisy.flatten(0, 1), method=None, differentiable=True).logits

    # -- Monte Carlo estimates ------------------------------------------------------------------

    def precision_for(self, method: str) -> str:
        """The precision the networks run in for ``method`` (the runtime's, "auto" resolved)."""
        return self.runtime.precision_for(self.device, float32_only=float32_only(method))

    def in_precision(self, precision: str) -> "FaithfulViT":
        """This FViT on read-only copies of its networks in ``precision`` (runtime.precision)."""
        classifier, denoiser = models_in_precision(self.classifier, self.denoiser, precision)
        copy = object.__new__(FaithfulViT)
        copy.__dict__.update(self.__dict__, classifier=classifier, denoiser=denoiser)
        return copy

    def sample(self, images: Tensor, n_samples: int, *, method: str = Explain.method, head_fusion: str = Explain.head_fusion,
               target: int | None = Explain.target, generator: torch.Generator | None = None,
               noise: Tensor | None = None, keep_samples: bool = False, early_stop: EarlyStop | None = None,
               progress: ProgressFn | None = None, scheme: str = SamplingSettings.scheme) -> list[SmoothedOutput]:
        """Monte Carlo estimates for every image of ``images`` (B, 3, H, W) in [0, 1]: one
        :class:`SmoothedOutput` each, with ``n_samples`` draws per image, explaining class
        ``target`` (None: each draw's own predicted class).

        ``noise`` (N, 3, H, W) in pixel units, if given, is used for every image (common random
        numbers; with ``scheme="antithetic"`` it must come in antithetic pairs, as
        runtime.sampling.scheme_normals makes them); otherwise each image gets its own draws from
        ``generator``, image after image (with ``early_stop``: in rounds of ``check_every``
        samples per image, and every image stops at the same N). ``scheme``: independent draws or
        antithetic pairs (method.settings.SAMPLING_SCHEMES). ``keep_samples`` keeps the (N, P)
        per-sample maps (the bootstrap needs them); otherwise memory does not grow with N.
        ``progress(done, total)`` is called after every forward batch.
        """
        _check_sampling(images, n_samples, method, head_fusion, early_stop)
        check_scheme(scheme)
        antithetic = scheme == "antithetic" and self.smoothing.noisy  # denoise-only makes one draw
        if antithetic:
            check_draws(n_samples, scheme)
        n = self.draws_per_image(n_samples)
        if noise is not None and tuple(noise.shape) != (n, *images.shape[1:]):
            raise SettingError(f"shared noise must be ({n}, {', '.join(map(str, images.shape[1:]))}), "
                               f"got {tuple(noise.shape)}")
        smoothed = self.in_precision(self.precision_for(method))  # resolved once per call
        pixels = images.detach().float().cpu()
        shared = None if noise is None else noise.detach().float().cpu()

        def work(job: Job) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray], np.ndarray | None,
                                    np.ndarray]:
            with torch.inference_mode():
                x = pixels[job.image_idx]
                if job.normal is not None:
                    x = x + job.normal * self.sigma
                elif shared is not None:
                    x = x + shared[job.sample_idx]
                d = smoothed.draw(x.to(self.device), method=method, head_fusion=head_fusion, target=target,
                                  generator=generator)
                firsts = {int(job.image_idx[row]): d.inputs[row].float().cpu().numpy()
                          for row in torch.nonzero(job.sample_idx == 0).flatten().tolist()}
                probs = torch.softmax(d.logits.float(), dim=-1)
                signed = None if d.relevance is None else d.relevance.double().cpu().numpy()
                return (job.image_idx.numpy(), d.attention.double().cpu().numpy(), probs.double().cpu().numpy(),
                        firsts, signed, job.sample_idx.numpy())

        sums = MonteCarloSums(len(images), self.classifier.num_patches, self.num_classes, keep_samples, antithetic)
        looks = early_stop.checkpoints(n) if early_stop is not None and self.smoothing.noisy else []
        z = early_stop.z(n) if looks else 0.0
        drawn, stopped = sample_loop(
            work, lambda result: sums.add(*result), runtime=self.runtime, n_images=len(images), n_samples=n,
            shape=tuple(images.shape[1:]), device=self.device, dtype=smoothed.classifier.mean.dtype,
            generator=generator, draw_noise=self.smoothing.noisy and noise is None,
            workers=self.runtime.workers(self.device, sequential=self.mode == "multistep"), looks=looks,
            settled=lambda count: sums.settled(count, early_stop, z), progress=progress, antithetic=antithetic)
        return sums.finish(drawn, self.t_star, stopped)

    def explain(self, x: Tensor, n: int, method: str = Explain.method, *, head_fusion: str = Explain.head_fusion,
                target: int | None = Explain.target, generator: torch.Generator | None = None,
                scheme: str = SamplingSettings.scheme) -> SmoothedOutput:
        """The FViT explanation of one image x (3, H, W) or (1, 3, H, W) for class ``target``
        (None: each draw's predicted class): w~(x) with its standard error, and the smoothed
        prediction, from n draws made by ``scheme``."""
        if x.ndim == 4 and x.shape[0] != 1 or x.ndim not in (3, 4):
            raise InputError(f"explain, predict and certify take one image (3, H, W), got shape {tuple(x.shape)}; "
                             "sample() takes a batch")
        return self.sample(x.reshape(1, *x.shape[-3:]), n, method=method, head_fusion=head_fusion, target=target,
                           generator=generator, scheme=scheme)[0]

    def predict(self, x: Tensor, n: int, alpha: float, *, generator: torch.Generator | None = None) -> int:
        """Cohen's PREDICT on one image: the top class of n independent draws' votes, or ABSTAIN
        when a binomial test cannot separate it from the runner-up at level ``alpha``."""
        return cohen.predict(self.explain(x, n, generator=generator, scheme="independent").votes, alpha)

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, *, method: str = Explain.method, head_fusion: str = Explain.head_fusion,
                generator: torch.Generator | None = None) -> Certificate:
        """Cohen's CERTIFY on one image: the class guessed from n0 selection draws, certified
        with radius sigma * Phi^-1(p_A lower bound) from n estimation draws (level ``alpha``).
        With probability >= 1 - alpha over the draws, the smoothed classifier's class is
        constant within that L2 ball (pixel units). The estimation draws also give the FViT
        explanation for ``method`` (for the top-k radius)."""
        # Independent draws: every vote counts in Cohen's binomial bounds.
        selection = self.explain(x, n0, generator=generator, scheme="independent")  # only its votes are used
        estimate = self.explain(x, n, method, head_fusion=head_fusion, generator=generator, scheme="independent")
        prediction, radius = cohen.certify_counts(selection.votes, estimate.votes, self.sigma, alpha)
        return Certificate(int(prediction), float(radius), estimate)


def _check_sampling(images: Tensor, n_samples: int, method: str, head_fusion: str,
                    early_stop: EarlyStop | None) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise SettingError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
    check_method(method)
    check_head_fusion(head_fusion)
    if early_stop is not None and not isinstance(early_stop, EarlyStop):
        raise SettingError(f"early_stop must be an EarlyStop rule or None, got {type(early_stop).__name__}")
    check_pixels(images, batched=True, what="images")
