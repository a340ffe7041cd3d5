"""The denoiser: a diffusers DDPM noise-prediction UNet with its schedule.

Denoisers come from diffusers ``from_pretrained`` (a hub id or a local folder with ``unet/`` and
``scheduler/`` sub-folders, or a flat folder as ``google/ddpm-cifar10-32`` is laid out); the
guided-diffusion checkpoints of the paper's setting are converted to that layout by
:mod:`fvit_core.models.adm`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fvit_core.errors import ModelLoadError, one_line
from fvit_core.models.config_bounds import check_unet_config, read_config
from fvit_core.models.common import check_finite_weights, check_safetensors, hub_offline, offline_reason


@dataclass
class Denoiser:
    """A DDPM noise-prediction network with its scheduler.

    ``unet(x_t, t).sample`` predicts the noise eps in diffusion space [-1, 1];
    ``alphas_cumprod[t]`` is abar_t, the cumulative product of (1 - beta_s) for s <= t.
    """

    unet: nn.Module
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    sample_size: int
    source: str = ""
    scheduler_config: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Denoiser":
        self.unet.to(device)
        return self


def load_denoiser(source: str | os.PathLike, *, allow_download: bool = False) -> Denoiser:
    """Load a diffusers UNet2DModel + DDPMScheduler with ``from_pretrained``.

    Args:
        source: a local folder (``unet/`` + ``scheduler/`` sub-folders as written by
            ``save_pretrained``, or a flat folder with the UNet's config.json and
            scheduler_config.json) or a hub id such as ``google/ddpm-cifar10-32``.
        allow_download: hub ids are fetched only when this is True (and HF_HUB_OFFLINE is unset).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(source).expanduser()
    local = path.is_dir()
    if not local and not allow_download:
        raise ModelLoadError(
            f"denoiser folder not found: {source}. To download a hub model such as "
            "google/ddpm-cifar10-32, allow downloads (CLI: --allow-download)."
        )
    where = str(path) if local else str(source)
    unet_sub = "unet" if (not local or (path / "unet").is_dir()) else None
    sched_sub = "scheduler" if (not local or (path / "scheduler").is_dir()) else None
    if local:
        unet_folder = path / unet_sub if unet_sub else path
        _check_denoiser_weights(unet_folder)
        _check_denoiser_config(unet_folder, path / sched_sub if sched_sub else path)
    offline = hub_offline()
    kwargs = {"local_files_only": local or offline}
    try:
        # Safetensors only, local or hub: a .bin file is a pickle (diffusers would torch.load it,
        # with weights_only=True, but we never rely on unpickling). Loading info lets us refuse
        # a file whose tensors do not match the architecture instead of initialising the gaps
        # at random, which diffusers does with only a warning.
        unet, info = UNet2DModel.from_pretrained(where, subfolder=unet_sub, use_safetensors=True,
                                                 low_cpu_mem_usage=False, output_loading_info=True, **kwargs)
        scheduler = DDPMScheduler.from_pretrained(where, subfolder=sched_sub, **kwargs)
    except Exception as exc:
        hint = f" ({offline_reason()}: only models already in the hub cache load)" if offline and not local else ""
        raise ModelLoadError(f"cannot load denoiser from {where}{hint}: {one_line(exc, 400)}") from exc
    problems = {kind: info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)}
    if problems:
        detail = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(map(str, keys[:5]))}{' ...' if len(keys) > 5 else ''}"
                           for kind, keys in problems.items())
        raise ModelLoadError(f"denoiser weights in {where} do not match its config.json ({detail}); "
                             "the checkpoint is truncated or belongs to another architecture")
    check_finite_weights(unet, f"denoiser {where}")
    abar = scheduler.alphas_cumprod.to(torch.float64)
    if abar.numel() < 2 or not bool(torch.isfinite(abar).all()) or bool((abar <= 0).any()) or bool((abar > 1).any()):
        raise ModelLoadError(f"the noise schedule in {where} is invalid (alphas_cumprod must lie in (0, 1]); "
                             "check beta_start / beta_end in scheduler_config.json")
    unet.eval()
    return Denoiser(
        unet=unet,
        alphas_cumprod=abar,
        num_train_timesteps=int(scheduler.config.num_train_timesteps),
        sample_size=int(unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]),
        source=where,
        scheduler_config=dict(scheduler.config),
    )


def _read_config(path: Path) -> dict:
    return read_config(path) if path.is_file() else {}  # diffusers then reports the missing file


def _check_denoiser_config(unet_folder: Path, scheduler_folder: Path) -> None:
    """Bounds of the UNet's config.json and the scheduler's config against the weights file,
    before diffusers builds the model (models.config_bounds)."""
    weights = sorted(unet_folder.glob("*.safetensors"))
    for file in weights:  # a broken file is named as such first, as the classifier's is
        check_safetensors(file)
    scheduler = _read_config(scheduler_folder / "scheduler_config.json")
    check_unet_config(_read_config(unet_folder / "config.json"), scheduler, weights[0], unet_folder / "config.json")


def _check_denoiser_weights(folder: Path) -> None:
    """A local UNet folder must hold safetensors weights; pickled .bin / .pt files are refused."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")) if folder.is_dir() else []
    if pickled:
        raise ModelLoadError(
            f"{folder} holds only pickled weights ({', '.join(pickled)}), which are never loaded; convert them "
            "once in a trusted environment: UNet2DModel.from_pretrained(FOLDER).save_pretrained(FOLDER, "
            "safe_serialization=True)"
        )


# The shipped denoiser: a 4-level UNet (2.7M parameters, 0.25 GFLOP/image) chosen for CPU speed;
# wider first levels doubled the cost for little gain (docs in the model card).
DEFAULT_UNET_ARGS: dict = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
    "block_out_channels": (16, 32, 64, 128),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8, "attention_head_dim": 32,
}


# A tiny UNet of the same family, for tests and quick experiments (0.1M parameters).
TINY_UNET_ARGS: dict = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
    "block_out_channels": (8, 16), "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"), "norm_num_groups": 4,
}
