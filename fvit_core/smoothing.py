"""The smoothing sample loop: Denoised Diffusion Smoothing (DDS) and its ablations.

docs/method.md, section 3. For each image x and i = 1..N: draw delta_i ~ N(0, sigma^2 I) in pixel
space (on the CPU, from the caller's generator, so results are identical on every device), form
the model input for the chosen mode, run the ViT, and accumulate

    FViT attention       w~(x) = mean_i w_i            (P,)
    smoothed prediction  y~(x) = mean_i softmax_i      (C,)
    vote counts          c[j]  = #{i : argmax p_i = j} (C,)

as running sums (memory does not grow with N unless per-sample maps are asked for).

Modes:
- ``dds``: one-shot denoise of x + delta at t* = timestep_for_sigma(sigma) (the FViT);
- ``rs``: randomized smoothing without a denoiser, the ViT sees x + delta clipped to [0, 1]
  (clipping is post-processing of the Gaussian mechanism, so the guarantees still hold);
- ``denoise-only``: no noise, x_t = sqrt(abar) (2x - 1), one deterministic denoising pass;
- ``multistep``: DDPM ancestral denoising from t* to 0 (slower; Carlini et al. found one-shot
  as good or better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .attention import EXPLANATION_METHODS, HEAD_FUSIONS, explain
from .denoise import multistep_denoise, one_shot_denoise, timestep_for_sigma
from .models import ModelPair

SMOOTHING_MODES: tuple[str, ...] = ("dds", "rs", "denoise-only", "multistep")


@dataclass
class SmoothedOutput:
    """Monte Carlo estimates for one image (numpy; probabilities and attention sum to 1).

    Attributes:
        attention: (P,) mean explanation w~(x).
        attention_se: (P,) per-coordinate standard error of that mean.
        probs: (C,) smoothed prediction distribution y~(x); probs_se its standard error.
        votes: (C,) int64 hard-vote counts.
        n_samples: N actually drawn (1 for denoise-only).
        t_star: denoising timestep (None for rs).
        denoised_sample: (3, H, W) the first model input, for display.
        samples_attention: (N, P) per-sample maps, only when asked for (bootstrap), else None.
    """

    attention: np.ndarray
    attention_se: np.ndarray
    probs: np.ndarray
    probs_se: np.ndarray
    votes: np.ndarray
    n_samples: int
    t_star: int | None
    denoised_sample: np.ndarray
    samples_attention: np.ndarray | None = None

    @property
    def label(self) -> int:
        """Predicted class of the smoothed distribution y~ (soft smoothed classifier)."""
        return int(np.argmax(self.probs))


class _Accumulator:
    """Streaming sums for the mean and standard error of per-sample vectors."""

    def __init__(self, n_images: int, dim_w: int, dim_p: int, keep: bool):
        self.sw = torch.zeros(n_images, dim_w, dtype=torch.float64)
        self.sw2 = torch.zeros_like(self.sw)
        self.sp = torch.zeros(n_images, dim_p, dtype=torch.float64)
        self.sp2 = torch.zeros_like(self.sp)
        self.votes = torch.zeros(n_images, dim_p, dtype=torch.long)
        self.samples: list[list[torch.Tensor]] | None = [[] for _ in range(n_images)] if keep else None
        self.first: list[torch.Tensor | None] = [None] * n_images

    def add(self, image_idx: torch.Tensor, w: torch.Tensor, p: torch.Tensor, inputs: torch.Tensor) -> None:
        w, p = w.double().cpu(), p.double().cpu()
        self.sw.index_add_(0, image_idx, w)
        self.sw2.index_add_(0, image_idx, w * w)
        self.sp.index_add_(0, image_idx, p)
        self.sp2.index_add_(0, image_idx, p * p)
        ones = torch.ones_like(image_idx)
        self.votes.index_put_((image_idx, p.argmax(-1)), ones, accumulate=True)
        for row, i in enumerate(image_idx.tolist()):
            if self.first[i] is None:
                self.first[i] = inputs[row].detach().float().cpu()
            if self.samples is not None:
                self.samples[i].append(w[row].float())

    def finish(self, n: int, t_star: int | None) -> list[SmoothedOutput]:
        def mean_se(s: torch.Tensor, s2: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            mean = s / n
            var = (s2 / n - mean * mean).clamp_min(0.0) * (n / max(n - 1, 1))
            return mean.numpy(), (var / n).sqrt().numpy()

        outs = []
        for i in range(self.sw.shape[0]):
            w, w_se = mean_se(self.sw[i], self.sw2[i])
            p, p_se = mean_se(self.sp[i], self.sp2[i])
            samples = torch.stack(self.samples[i]).numpy() if self.samples is not None else None
            outs.append(SmoothedOutput(
                attention=(w / w.sum()).astype(np.float64), attention_se=w_se, probs=p / p.sum(), probs_se=p_se,
                votes=self.votes[i].numpy().copy(), n_samples=n, t_star=t_star,
                denoised_sample=self.first[i].numpy(), samples_attention=samples,
            ))
        return outs


def _check(pair: ModelPair, mode: str, sigma: float, n_samples: int, method: str, head_fusion: str, batch_size: int) -> None:
    if mode not in SMOOTHING_MODES:
        raise ValueError(f"unknown smoothing mode {mode!r}; choose one of {', '.join(SMOOTHING_MODES)}")
    if mode != "rs" and pair.denoiser is None:
        raise ValueError(f"mode {mode!r} needs a denoiser; load a pair with one or use mode 'rs'")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if method not in EXPLANATION_METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(EXPLANATION_METHODS)}")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head fusion {head_fusion!r}; choose one of {', '.join(HEAD_FUSIONS)}")
    if mode != "denoise-only" and not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number of pixel units (e.g. 0.25), got {sigma!r}")


@torch.no_grad()
def smooth(
    pair: ModelPair,
    images: torch.Tensor,
    *,
    sigma: float,
    n_samples: int,
    mode: str = "dds",
    method: str = "raw",
    head_fusion: str = "mean",
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    keep_samples: bool = False,
    multistep_steps: int = 10,
    progress: Callable[[int, int], None] | None = None,
) -> list[SmoothedOutput]:
    """Run the smoothing loop for a batch of images (B, 3, H, W) in [0, 1]; one output per image.

    Samples of all images are interleaved in the same forward batches (clean and attacked images
    share passes). ``noise`` (N, 3, H, W) in pixel units, if given, is used for every image
    (common random numbers); otherwise each image gets independent draws from ``generator``.
    ``progress(done, total)`` is called after every batch.
    """
    _check(pair, mode, sigma, n_samples, method, head_fusion, batch_size)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    clf, den, device = pair.classifier, pair.denoiser, pair.device
    n = 1 if mode == "denoise-only" else n_samples
    # denoise-only still uses sigma to choose the timestep it denoises from.
    t_star = None if mode == "rs" else timestep_for_sigma(den.alphas_cumprod, sigma)
    if noise is not None and tuple(noise.shape) != (n, *images.shape[1:]):
        raise ValueError(f"shared noise must be ({n}, {', '.join(map(str, images.shape[1:]))}), got {tuple(noise.shape)}")
    b_images = images.shape[0]
    acc = _Accumulator(b_images, clf.num_patches, clf.num_classes, keep_samples)
    # Sample index j of image i is flat index i * n + j; batches cut across images.
    total = b_images * n
    x_cpu = images.detach().float().cpu()
    for start in range(0, total, batch_size):
        flat = torch.arange(start, min(start + batch_size, total))
        image_idx, sample_idx = flat // n, flat % n
        x = x_cpu[image_idx]
        if mode == "denoise-only":
            delta = torch.zeros_like(x)
        elif noise is not None:
            delta = noise.detach().float().cpu()[sample_idx]
        else:
            delta = torch.randn(x.shape, generator=generator) * sigma
        inputs = _model_inputs(pair, (x + delta).to(device), mode, t_star, multistep_steps, generator)
        exp = explain(clf, inputs, method=method, head_fusion=head_fusion)
        acc.add(image_idx, exp.attention, torch.softmax(exp.logits.float(), dim=-1), inputs)
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return acc.finish(n, t_star)


def _model_inputs(pair: ModelPair, noisy: torch.Tensor, mode: str, t_star: int | None, steps: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    out_size = pair.classifier.img_size
    if mode == "rs":
        return noisy.clamp(0.0, 1.0)
    if mode == "multistep":
        step_gen = None
        if generator is not None and noisy.device.type == "cpu":
            step_gen = generator
        return multistep_denoise(pair.denoiser, noisy, t_star, n_steps=steps, generator=step_gen, out_size=out_size)
    return one_shot_denoise(pair.denoiser, noisy, t_star, out_size=out_size)


def vanilla(pair: ModelPair, images: torch.Tensor, *, method: str = "raw", head_fusion: str = "mean"
            ) -> tuple[np.ndarray, np.ndarray]:
    """The vanilla ViT on a batch: (attention (B, P), probabilities (B, C)) as numpy."""
    exp = explain(pair.classifier, images.to(pair.device), method=method, head_fusion=head_fusion)
    return exp.attention.double().cpu().numpy(), torch.softmax(exp.logits.float(), -1).double().cpu().numpy()
