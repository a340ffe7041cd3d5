"""Model-card measurements of a classifier / denoiser pair on a labelled image folder.

Every number in assets/models/*/MODEL_CARD.md comes from :func:`evaluate_pair` (CLI:
``fvit evaluate-models``): clean accuracy, one-shot denoising PSNR, accuracy of the smoothed
classifier (DDS, hard votes) and Cohen certified accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma
from fvit_core.models.loading import Denoiser, PixelViT
from fvit_core.training.data import load_training_data
from fvit_core.training.train_denoiser import denoiser_psnr


@torch.no_grad()
def dds_votes(
    classifier: PixelViT,
    denoiser: Denoiser | None,
    x: torch.Tensor,
    sigma: float,
    n_samples: int,
    *,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Vote counts (C,) of argmax predictions over ``n_samples`` DDS draws for one image x (3, H, W).

    Noise is drawn on the CPU from ``generator`` so that counts are identical on every device.
    With ``denoiser=None`` this is plain randomized smoothing (Cohen et al.).
    """
    device = classifier.mean.device
    t_star = timestep_for_sigma(denoiser.alphas_cumprod, sigma) if denoiser is not None else None
    counts = torch.zeros(classifier.num_classes, dtype=torch.long)
    remaining = n_samples
    while remaining > 0:
        b = min(batch_size, remaining)
        noise = torch.randn((b, *x.shape), generator=generator) * sigma
        noisy = (x.cpu()[None] + noise).to(device)
        inputs = one_shot_denoise(denoiser, noisy, t_star) if denoiser is not None else noisy
        preds = classifier(inputs).argmax(-1).cpu()
        counts += torch.bincount(preds, minlength=classifier.num_classes)
        remaining -= b
    return counts


@dataclass
class PairEvaluation:
    """Measured numbers for a model card; accuracies are fractions in [0, 1], PSNR in dB."""

    clean_accuracy: float
    n_clean: int
    psnr: dict[str, dict[str, float]]
    dds_accuracy: dict[str, float]
    n_dds: int
    dds_samples: int
    seconds: float


def evaluate_pair(
    classifier: PixelViT,
    denoiser: Denoiser,
    data: str,
    *,
    sigmas: tuple[float, ...] = (0.12, 0.25, 0.5),
    n_dds_images: int = 500,
    dds_samples: int = 100,
    seed: int = 0,
    batch_size: int = 500,
    report: "Callable[[str, object], None] | None" = None,
    parts: tuple[str, ...] = ("clean", "psnr", "dds"),
) -> PairEvaluation:
    """Clean accuracy (all images), PSNR (all images) and DDS accuracy (first ``n_dds_images`` of a
    seeded permutation) of a pair on the image folder ``data``."""
    start = time.perf_counter()
    device = classifier.mean.device
    report = report or (lambda name, value: None)
    images, labels, _ = load_training_data(data, train=False, size=classifier.img_size[0])
    correct = 0
    for i in range(0, len(images), batch_size) if "clean" in parts else ():
        x = images[i:i + batch_size].to(device).float() / 255.0
        correct += int((classifier(x).argmax(-1).cpu() == labels[i:i + batch_size]).sum())
    if "clean" in parts:
        report("clean_accuracy", correct / len(images))
    psnr = {}
    for sigma in sigmas if "psnr" in parts else ():
        den, noisy = denoiser_psnr(denoiser, images, sigma, seed=seed, batch_size=batch_size)
        psnr[f"{sigma:g}"] = {"one_shot": den, "noisy_input": noisy}
        report("psnr", psnr)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n_dds_images]
    dds = {}
    for sigma in sigmas if "dds" in parts else ():
        g = torch.Generator().manual_seed(seed)
        hits = 0
        for idx in order.tolist():
            x = images[idx].float() / 255.0
            counts = dds_votes(classifier, denoiser, x, sigma, dds_samples, batch_size=batch_size, generator=g)
            hits += int(int(counts.argmax()) == int(labels[idx]))
        dds[f"{sigma:g}"] = hits / len(order)
        report("dds_accuracy", dds)
    return PairEvaluation(
        clean_accuracy=correct / len(images), n_clean=len(images), psnr=psnr, dds_accuracy=dds,
        n_dds=len(order), dds_samples=dds_samples, seconds=time.perf_counter() - start,
    )


def certified_accuracy(
    classifier: PixelViT,
    denoiser: Denoiser,
    data: str,
    *,
    sigma: float = 0.25,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    n_images: int = 200,
    radii: tuple[float, ...] = (0.0, 0.25, 0.5),
    seed: int = 0,
    batch_size: int = 500,
    report: "Callable[[str, object], None] | None" = None,
) -> dict:
    """Cohen CERTIFY on ``n_images`` images of a seeded permutation; certified accuracy at radii.

    ``report("certify_partial", summary)`` is called every 20 images with the numbers so far."""
    from fvit_core.method.certify import ABSTAIN, certify_counts

    images, labels, _ = load_training_data(data, train=False, size=classifier.img_size[0])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + 1))[:n_images]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for idx in order.tolist():
        x = images[idx].float() / 255.0
        c0 = dds_votes(classifier, denoiser, x, sigma, n0, batch_size=batch_size, generator=g)
        c = dds_votes(classifier, denoiser, x, sigma, n, batch_size=batch_size, generator=g)
        cls, radius = certify_counts(c0.numpy(), c.numpy(), sigma, alpha)
        rows.append((int(labels[idx]), cls, radius))
        if report is not None and len(rows) % 20 == 0:
            report("certify_partial", _certified_summary(rows, radii, sigma, n0, n, alpha))
    return _certified_summary(rows, radii, sigma, n0, n, alpha)


def _certified_summary(rows: list, radii: tuple[float, ...], sigma: float, n0: int, n: int, alpha: float) -> dict:
    from fvit_core.method.certify import ABSTAIN

    out = {}
    for r in radii:
        ok = [cls == label and cls != ABSTAIN and radius >= r for label, cls, radius in rows]
        out[f"{r:g}"] = float(np.mean(ok))
    return {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "n_images": len(rows), "certified_accuracy": out}
