"""Train the shipped DDPM denoiser: a diffusers UNet2DModel with the noise-prediction objective.

The scheduler is diffusers' standard linear 1000-step DDPMScheduler (beta 1e-4 .. 0.02). DDS only
ever denoises from t* = timestep_for_sigma(sigma); sigma from about 0.03 to 1.0 maps to t* up to
about 400, so training samples t uniformly from [0, t_max] (default 450) and spends no capacity on
the generative high-noise range. Saved with save_pretrained (unet/ + scheduler/, safetensors), so
loading it is the same code as loading a hub model such as google/ddpm-cifar10-32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fvit_core.models import DEFAULT_UNET_ARGS
from fvit_core.training.data import augment_batch
from fvit_core.training.loop import (EMA, TrainRunConfig, load_checkpoint, seed_step, start_training, train,
                                     write_json)


@dataclass
class DenoiserTrainConfig(TrainRunConfig):
    """Everything that determines a denoiser training run (written to train_config.json)."""

    unet_args: dict = field(default_factory=lambda: dict(DEFAULT_UNET_ARGS))
    t_max: int = 450


def train_denoiser(cfg: DenoiserTrainConfig, *, progress: bool = True) -> Path:
    """Train (or resume) a denoiser; returns the output folder (unet/ + scheduler/ of the EMA)."""
    from diffusers import DDPMScheduler

    out, device, images, _, classes = start_training(cfg, int(cfg.unet_args.get("sample_size", 32)))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    sqrt_abar = scheduler.alphas_cumprod.sqrt().to(device)
    sqrt_1m_abar = (1 - scheduler.alphas_cumprod).sqrt().to(device)
    from diffusers import UNet2DModel

    unet = UNet2DModel(**cfg.unet_args).to(device).train()
    ema = EMA(unet, cfg.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    meta = load_checkpoint(out, model=unet, ema=ema, opt=opt)
    start = meta["step"] if meta else 0
    total = meta["total_steps"] if meta else (cfg.steps or int(cfg.epochs * steps_per_epoch))
    write_json(out / "train_config.json", {**asdict(cfg), "classes": classes, "n_train": len(images)})
    state = {"total": total}

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seed_step(cfg.seed, step)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # resumable batch choice
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=g).to(device)
        x0 = augment_batch(images[idx], pad=0) * 2.0 - 1.0
        t = torch.randint(0, cfg.t_max + 1, (x0.shape[0],), device=device)
        noise = torch.randn_like(x0)
        return sqrt_abar[t].view(-1, 1, 1, 1) * x0 + sqrt_1m_abar[t].view(-1, 1, 1, 1) * noise, t, noise

    def noise_prediction_error(x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(unet(x_t, t).sample.float(), noise)

    if not train(batch, noise_prediction_error, cfg, device=device, meta=meta, start=start, schedule=state, out=out,
                 model=unet, ema=ema, opt=opt, progress=progress, name="denoiser"):
        return out
    total = state["total"]
    ema.module.eval().save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    write_json(out / "train_summary.json", {"steps": total, "epochs": total / steps_per_epoch})
    return out


@torch.no_grad()
def denoiser_psnr(denoiser, images: torch.Tensor, sigma: float, *, seed: int = 0, batch_size: int = 500) -> tuple[float, float]:
    """Mean PSNR (dB) of the one-shot estimate and of the noisy input against clean images.

    ``images`` are uint8 (N, 3, H, W). Noise is N(0, sigma^2) in pixel units, seeded.
    """
    from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma

    t_star = timestep_for_sigma(denoiser.alphas_cumprod, sigma)
    g = torch.Generator().manual_seed(seed)
    device = next(denoiser.unet.parameters()).device
    psnr_out, psnr_in = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float().div(255.0)
        noisy = x + sigma * torch.randn(x.shape, generator=g)
        est = one_shot_denoise(denoiser, noisy.to(device), t_star).cpu()
        for ref, cand, bucket in ((x, est, psnr_out), (x, noisy.clamp(0, 1), psnr_in)):
            mse = ((ref - cand) ** 2).flatten(1).mean(1)
            bucket.append(10 * torch.log10(1.0 / mse))
    return float(torch.cat(psnr_out).mean()), float(torch.cat(psnr_in).mean())
