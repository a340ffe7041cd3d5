"""Model-card measurements of a classifier / denoiser pair on a labelled image folder.

Every number in assets/models/*/MODEL_CARD.md comes from :func:`evaluate_pair` and :func:`certify_pair` (CLI:
``fvit evaluate-models``): clean accuracy, one-shot denoising PSNR, accuracy of the smoothed
classifier (DDS, hard votes) and Cohen certified accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fvit_core.method.certify import certified_accuracy
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.models import Denoiser, PixelViT
from fvit_core.runtime.strategy import Runtime
from fvit_core.training.data import load_training_data
from fvit_core.training.train_denoiser import denoiser_psnr


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
        fvit = _faithful_vit(classifier, denoiser, sigma, batch_size)
        g = torch.Generator().manual_seed(seed)
        hits = 0
        for idx in order.tolist():
            votes = fvit.explain(images[idx].float() / 255.0, dds_samples, generator=g, scheme="independent").votes
            hits += int(int(votes.argmax()) == int(labels[idx]))  # hard votes, ties to the lower class
        dds[f"{sigma:g}"] = hits / len(order)
        report("dds_accuracy", dds)
    return PairEvaluation(
        clean_accuracy=correct / len(images), n_clean=len(images), psnr=psnr, dds_accuracy=dds,
        n_dds=len(order), dds_samples=dds_samples, seconds=time.perf_counter() - start,
    )


def certify_pair(
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
    """Cohen CERTIFY (FaithfulViT.certify) on ``n_images`` images of a seeded permutation;
    certified accuracy (certify.certified_accuracy) at ``radii``.

    ``report("certify_partial", summary)`` is called every 20 images with the numbers so far."""
    images, labels, _ = load_training_data(data, train=False, size=classifier.img_size[0])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + 1))[:n_images]
    fvit = _faithful_vit(classifier, denoiser, sigma, batch_size)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for idx in order.tolist():
        prediction, radius, _ = fvit.certify(images[idx].float() / 255.0, n0, n, alpha, generator=g)
        rows.append((int(labels[idx]), prediction, radius))
        if report is not None and len(rows) % 20 == 0:
            report("certify_partial", _certified_summary(rows, radii, sigma, n0, n, alpha))
    return _certified_summary(rows, radii, sigma, n0, n, alpha)


def _faithful_vit(classifier: PixelViT, denoiser: Denoiser | None, sigma: float, batch_size: int) -> FaithfulViT:
    """The FViT of the model cards: DDS in float32; without a denoiser, randomized smoothing, whose
    noisy input is clipped to [0, 1] like everywhere else (the former ``dds_votes`` fed it unclipped;
    every shipped pair has a denoiser, so no model card number came from that path)."""
    return FaithfulViT(classifier, denoiser, sigma, mode="dds" if denoiser is not None else "rs",
                       runtime=Runtime(precision="float32", batch_size=batch_size))


def _certified_summary(rows: list, radii: tuple[float, ...], sigma: float, n0: int, n: int, alpha: float) -> dict:
    labels, predictions, certified = (list(column) for column in zip(*rows)) if rows else ([], [], [])
    accuracy = certified_accuracy(predictions, labels, certified, np.asarray(radii, dtype=np.float64))
    out = {f"{r:g}": float(value) for r, value in zip(radii, accuracy)}
    return {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "n_images": len(rows), "certified_accuracy": out}
