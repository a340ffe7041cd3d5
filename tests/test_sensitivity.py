"""Neighbourhood sensitivity (fvit_core/explanations/sensitivity.py): the ball draws and the statistic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fvit_core.explanations.sensitivity import ball_perturbations, relative_change, sensitivity
from fvit_core.protocol.limits import BOUNDS

MAX_SENSITIVITY_SAMPLES = int(BOUNDS["sensitivity_samples"].high)


def test_linf_draws_stay_in_the_ball_and_the_image_range():
    x = torch.full((1, 3, 8, 8), 0.5)
    x[..., 0, 0] = 0.0
    out = ball_perturbations(x, 16, 0.1, "Linf", torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 8, 8)
    assert float((out - x).abs().max()) <= 0.1 + 1e-7
    assert float(out.min()) >= 0.0  # clamped where x - d would leave [0, 1]
    assert float((out - x).abs().max()) > 0.09  # uniform in [-r, r] reaches near r over 3072 pixels


def test_l2_draws_stay_in_the_ball():
    x = torch.full((1, 3, 8, 8), 0.5)
    out = ball_perturbations(x, 32, 0.2, "L2", torch.Generator().manual_seed(1))
    norms = (out - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= 0.2 + 1e-6
    assert float(norms.min()) > 0.18  # in 192 dimensions the mass of the ball is near its surface


def test_draws_are_seeded_and_bounded():
    x = torch.rand(1, 3, 4, 4)
    a = ball_perturbations(x, 4, 0.05, "Linf", torch.Generator().manual_seed(3))
    b = ball_perturbations(x, 4, 0.05, "Linf", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=f"sensitivity_samples must be a whole number in 0..{MAX_SENSITIVITY_SAMPLES}"):
        ball_perturbations(x, MAX_SENSITIVITY_SAMPLES + 1, 0.05, "Linf", torch.Generator())
    with pytest.raises(ValueError, match="at least 1"):
        ball_perturbations(x, 0, 0.05, "Linf", torch.Generator())
    with pytest.raises(ValueError, match="Linf, L2"):
        ball_perturbations(x, 4, 0.05, "L1", torch.Generator())


def test_sensitivity_by_hand():
    base = np.array([0.5, 0.5, 0.0, 0.0])  # norm sqrt(0.5)
    same, moved = base.copy(), np.array([0.0, 0.5, 0.5, 0.0])  # difference norm sqrt(0.5)
    np.testing.assert_allclose(relative_change(base, np.stack([same, moved])), [0.0, 1.0])
    assert sensitivity(base, np.stack([same, moved])) == pytest.approx({"max": 1.0, "mean": 0.5})
