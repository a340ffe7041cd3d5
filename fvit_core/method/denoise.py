"""The denoising step of DDS: sigma -> timestep rule and the one-shot x0 estimate.

docs/METHOD.md, section 3. Pixels live in [0, 1]; the diffusion model works in [-1, 1], so a
pixel-space noise std sigma is a diffusion-space std 2*sigma. A DDPM sample at timestep t is
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, so scaling a noisy image by sqrt(abar_t) gives a
valid x_t exactly when sqrt((1 - abar_t) / abar_t) = 2*sigma.
"""

from __future__ import annotations

import math
import numbers

import torch

from fvit_core.data.pixels import resize_pixels
from fvit_core.errors import InputError, SettingError
from fvit_core.method.settings import SmoothingSettings
from fvit_core.models import Denoiser


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """t* = the first timestep t with sqrt((1 - abar_t) / abar_t) >= 2*sigma (0-based).

    For the linear 1000-step schedule (beta 1e-4 .. 0.02): sigma 0.25 -> 145, 0.5 -> 259,
    1.0 -> 396. Raises ValueError when sigma is not positive or exceeds the schedule's range.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise SettingError(f"sigma must be a positive number of pixel units (e.g. 0.25), got {sigma!r}")
    abar = alphas_cumprod.to(torch.float64)
    ratio = torch.sqrt((1.0 - abar) / abar)
    hits = torch.nonzero(ratio >= 2.0 * sigma)
    if hits.numel() == 0:
        largest = float(ratio[-1]) / 2.0
        raise SettingError(f"sigma={sigma} exceeds the denoiser's noise range (largest sigma {largest:.3g})")
    return int(hits[0, 0])


def check_schedule(denoiser: Denoiser | None, sigma: float, mode: str,
                   multistep_steps: int = SmoothingSettings.multistep_steps) -> int | None:
    """t* for a smoothing mode that denoises (None for rs), refusing the degenerate settings.

    - t* = 0: sigma is below the schedule's first noise level, so the "denoiser" would be asked
      to remove noise at timestep 0 (none): the FViT would be the vanilla ViT on noisy pixels;
    - multistep with more steps than t*: steps would repeat timesteps (and a huge count only
      costs memory and time), so at most t* steps.
    Both are refused with the smallest sigma, or the largest step count, that works.
    """
    if mode == "rs" or denoiser is None:
        return None
    t_star = timestep_for_sigma(denoiser.alphas_cumprod, sigma)
    if t_star == 0:
        abar = denoiser.alphas_cumprod.to(torch.float64)
        smallest = float(torch.sqrt((1.0 - abar[0]) / abar[0])) / 2.0
        raise SettingError(f"sigma={sigma:g} is below the denoiser's smallest noise level: t* would be 0 (nothing to "
                         f"denoise); use sigma > {smallest:.3g}, or mode rs")
    if mode == "multistep" and multistep_steps > t_star:
        raise SettingError(f"multistep_steps={multistep_steps} exceeds t*={t_star} (sigma {sigma:g}): at most one step "
                         f"per timestep; use multistep_steps <= {t_star}")
    return t_star


def check_timestep(denoiser: Denoiser, t_star: int) -> int:
    """t* must index the denoiser's schedule: 0 <= t* < num_train_timesteps."""
    if isinstance(t_star, bool) or not isinstance(t_star, numbers.Integral) or not 0 <= t_star < len(denoiser.alphas_cumprod):
        raise SettingError(f"t_star must be a timestep in 0..{len(denoiser.alphas_cumprod) - 1}, got {t_star!r}; "
                         "use timestep_for_sigma(sigma)")
    return t_star


def check_denoiser_size(denoiser: Denoiser, x: torch.Tensor) -> None:
    """Noisy images must come at the denoiser's own size: noise added at another size and then
    resized is not the white noise of std 2*sigma the UNet was trained on at t* (ModelPair.smoothing_size
    says why). ValueError otherwise."""
    size = (denoiser.sample_size, denoiser.sample_size)
    if tuple(x.shape[-2:]) != size:
        raise InputError(f"the denoiser takes {size[0]}x{size[1]} pixels, got {tuple(x.shape)}: prepare the image at "
                         "pair.smoothing_size(mode) and add the noise there, not before a resize")


def _predict_noise(denoiser: Denoiser, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """eps_theta(x_t, t) in the dtype of ``x_t``; the UNet runs in its own dtype (float32, or a
    bfloat16 copy made by the smoothing loop), the x0 formula around it stays in ``x_t``'s.

    Learned-sigma models (guided-diffusion's, converted by fvit_core.models.adm) output epsilon followed
    by the variance interpolation: only the first 3 channels, epsilon, are used."""
    unet_dtype = next(denoiser.unet.parameters()).dtype
    out = denoiser.unet(x_t.to(unet_dtype), timesteps).sample
    return out[:, : x_t.shape[1]].to(x_t.dtype)


def one_shot_denoise(
    denoiser: Denoiser,
    x_noisy: torch.Tensor,
    t_star: int,
    *,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One-shot x0 estimate of noisy pixels ``x_noisy = x + delta`` (B, 3, H, W) at the denoiser's
    size (check_denoiser_size).

    x_t = sqrt(abar) * (2 x_noisy - 1); x0_hat = (x_t - sqrt(1 - abar) eps_theta(x_t, t*)) /
    sqrt(abar), clipped to [-1, 1] and mapped back to [0, 1] pixels, at the denoiser's size or
    resized to ``out_size``. Differentiable (the adaptive attack back-propagates through it).
    """
    check_timestep(denoiser, t_star)
    check_denoiser_size(denoiser, x_noisy)
    abar = float(denoiser.alphas_cumprod[t_star])
    x_t = math.sqrt(abar) * (2.0 * x_noisy - 1.0)
    timesteps = torch.full((x_t.shape[0],), t_star, device=x_t.device, dtype=torch.long)
    eps = _predict_noise(denoiser, x_t, timesteps)
    x0 = ((x_t - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)).clamp(-1.0, 1.0)
    pixels = (x0 + 1.0) / 2.0
    return pixels if out_size is None else resize_pixels(pixels, out_size)


def multistep_denoise(
    denoiser: Denoiser,
    x_noisy: torch.Tensor,
    t_star: int,
    *,
    n_steps: int = SmoothingSettings.multistep_steps,
    generator: torch.Generator | None = None,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Multi-step DDPM ancestral denoising from t* down to 0 on ``n_steps`` evenly spaced steps.

    ``x_noisy`` at the denoiser's size; output at that size or ``out_size``. Slower than
    :func:`one_shot_denoise`; Carlini et al. found one-shot as good or better for
    smoothing. Noise for the stochastic steps comes from ``generator`` (seeded by the caller).
    """
    if n_steps < 1:
        raise SettingError(f"n_steps must be at least 1, got {n_steps}")
    check_timestep(denoiser, t_star)
    check_denoiser_size(denoiser, x_noisy)
    abar_all = denoiser.alphas_cumprod.to(x_noisy.device, torch.float32)
    x_t = math.sqrt(float(abar_all[t_star])) * (2.0 * x_noisy - 1.0)
    steps = torch.linspace(t_star, 0, n_steps + 1).round().long().tolist()
    for t, t_prev in zip(steps[:-1], steps[1:]):
        abar_t = float(abar_all[t])
        eps = _predict_noise(denoiser, x_t, torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long))
        x0 = ((x_t - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)).clamp(-1, 1)
        if t_prev == t or t == 0:
            x_t = x0
            continue
        abar_prev = float(abar_all[t_prev]) if t_prev > 0 else 1.0
        # DDPM posterior q(x_{t_prev} | x_t, x0) for a respaced pair of steps.
        beta = 1.0 - abar_t / abar_prev
        mean = (math.sqrt(abar_prev) * beta / (1 - abar_t)) * x0 + (
            math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar_t)) * x_t
        var = beta * (1 - abar_prev) / (1 - abar_t)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        x_t = mean + math.sqrt(max(var, 0.0)) * noise if t_prev > 0 else x0
    pixels = (x_t.clamp(-1, 1) + 1.0) / 2.0
    return pixels if out_size is None else resize_pixels(pixels, out_size)
