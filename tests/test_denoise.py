"""The sigma -> t* rule and the one-shot estimate (docs/METHOD.md, section 3)."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from fvit_core.method.denoise import multistep_denoise, one_shot_denoise, timestep_for_sigma


@pytest.fixture(scope="module")
def schedule():
    return DDPMScheduler(num_train_timesteps=1000).alphas_cumprod


@pytest.mark.parametrize("sigma, expected", [(0.25, 145), (0.5, 259), (1.0, 396), (0.12, 70)])
def test_timestep_for_sigma_linear_schedule(schedule, sigma, expected):
    assert timestep_for_sigma(schedule, sigma) == expected


def test_timestep_is_first_to_reach_twice_sigma(schedule):
    t = timestep_for_sigma(schedule, 0.3)
    ratio = lambda i: math.sqrt((1 - float(schedule[i])) / float(schedule[i]))  # noqa: E731
    assert ratio(t) >= 0.6 > ratio(t - 1)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), 1000.0])
def test_timestep_rejects_bad_sigma(schedule, bad):
    with pytest.raises(ValueError, match="sigma"):
        timestep_for_sigma(schedule, bad)


def test_one_shot_matches_diffusers_pred_original_sample(tiny_pair):
    """Our x0 formula equals diffusers' own DDPMScheduler.step(...).pred_original_sample."""
    den = tiny_pair.denoiser
    sched = DDPMScheduler(num_train_timesteps=1000, clip_sample=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = 0.25
    t = timestep_for_sigma(den.alphas_cumprod, sigma)
    noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = one_shot_denoise(den, noisy, t)
        x_t = math.sqrt(float(den.alphas_cumprod[t])) * (2 * noisy - 1)
        eps = den.unet(x_t, torch.full((2,), t)).sample
        theirs = sched.step(eps, t, x_t).pred_original_sample
    assert torch.allclose(ours, (theirs + 1) / 2, atol=1e-5)


def test_one_shot_output_size_and_range(tiny_pair):
    den = tiny_pair.denoiser
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = one_shot_denoise(den, x, 50)
        out_small = one_shot_denoise(den, x, 50, out_size=(16, 16))
    assert out.shape == (1, 3, 32, 32) and out_small.shape == (1, 3, 16, 16)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="denoiser takes 32x32"):
        one_shot_denoise(den, torch.rand(1, 3, 48, 40), 50)  # noise must be added at the UNet's size


def test_multistep_is_seeded_and_in_range(tiny_pair):
    den = tiny_pair.denoiser
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = multistep_denoise(den, x, 100, n_steps=4, generator=torch.Generator().manual_seed(3))
        b = multistep_denoise(den, x, 100, n_steps=4, generator=torch.Generator().manual_seed(3))
        c = multistep_denoise(den, x, 100, n_steps=4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
