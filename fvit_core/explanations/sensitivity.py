"""Neighbourhood sensitivity of an explanation: how far it moves under M random perturbations in a
small ball around the image (docs/METRICS.md).

Max- and average-sensitivity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of
explanations"; Captum's ``sensitivity_max``, Quantus' ``MaxSensitivity`` / ``AvgSensitivity``):

    S(x) = ||w(x + d) - w(x)||_2 / ||w(x)||_2,   d ~ uniform in the Linf or L2 ball of radius r,

maximised or averaged over M draws. x + d is clamped to [0, 1] (a valid image). The explanation
w is the normalised patch map (sums to 1), so S is a relative change, 0 for an unchanged map.

The FViT's map is a Monte Carlo estimate: two estimates of the *same* image already differ, so
its sensitivity is read against the same statistic between two clean estimates (its noise floor,
computed by the pipeline).
"""

from __future__ import annotations

import numpy as np
import torch

from fvit_core.errors import InputError, SettingError
from fvit_core.explanations.settings import SensitivitySettings



def ball_perturbations(x: torch.Tensor, m: int, radius: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """M copies of the image ``x`` (1, 3, H, W) in [0, 1], each moved by a uniform draw from the
    ``norm`` ball of ``radius`` (pixel units) and clamped to [0, 1]: (M, 3, H, W) on x's device.

    Linf: each pixel uniform in [-r, r]. L2: uniform in the ball (Gaussian direction, radius
    r * U^(1/d), d the number of pixels). Noise is drawn on the CPU from ``generator``.
    """
    check_sensitivity_settings(m, radius, norm)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, 3, H, W), got {tuple(x.shape)}")
    shape = (m, *x.shape[1:])
    if norm == "Linf":
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * radius
    else:
        direction = torch.randn(shape, generator=generator)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(m, 1, 1, 1)
        dims = int(np.prod(shape[1:]))
        scale = radius * torch.rand(m, generator=generator) ** (1.0 / dims)
        delta = direction * scale.view(m, 1, 1, 1)
    return (x.float().cpu() + delta).clamp(0.0, 1.0).to(x.device)


def relative_change(base: np.ndarray, others: np.ndarray) -> np.ndarray:
    """||others_i - base||_2 / ||base||_2 per row of ``others`` (M, P) against ``base`` (P,) or (M, P)."""
    base, others = np.asarray(base, dtype=np.float64), np.asarray(others, dtype=np.float64)
    scale = np.linalg.norm(base, axis=-1)
    if np.any(scale <= 0):
        raise InputError("sensitivity is relative to the explanation's norm; the explanation is all zero")
    return np.linalg.norm(others - base, axis=-1) / scale


def sensitivity(base: np.ndarray, perturbed: np.ndarray) -> dict[str, float]:
    """{"max": max-sensitivity, "mean": average-sensitivity} of the explanation ``base`` (P,) over
    its explanations at M perturbed images ``perturbed`` (M, P)."""
    changes = relative_change(base, np.atleast_2d(perturbed))
    return {"max": float(changes.max()), "mean": float(changes.mean())}


def check_sensitivity_settings(m: int, radius: float, norm: str) -> None:
    """SettingError unless M >= 1 perturbations in a ``norm`` ball of ``radius`` are valid
    SensitivitySettings (the settings' own checks)."""
    SensitivitySettings(samples=m, radius=radius, norm=norm)
    if m < 1:
        raise SettingError(f"sensitivity samples must be at least 1 to draw perturbations, got {m!r}")
