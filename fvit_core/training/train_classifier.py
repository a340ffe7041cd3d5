"""Train the shipped CIFAR-10 ViT classifier (or one of the same family on your own image folder).

Recipe: random crop (reflect pad 4) + horizontal flip, Mixup/CutMix with label smoothing (timm's
Mixup), AdamW with weight decay on weights only, linear warm-up + cosine schedule, EMA weights
(the EMA is what ships). Optionally a fine-tuning stage on DDS inputs: a fraction of each batch
is noised at sigma from ``sigmas`` and one-shot denoised by a trained denoiser, so the smoothed
classifier stays accurate on denoised images (Carlini et al. 2023 report such a fine-tuned
variant). Resumable: a checkpoint is written every ``checkpoint_every_s`` seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fvit_core.models import (CIFAR10_MEAN, CIFAR10_STD, DEFAULT_VIT_ARCH, DEFAULT_VIT_ARGS, PixelViT, create_vit,
                      load_classifier, load_denoiser, save_classifier)
from fvit_core.training.data import augment_batch, load_training_data
from fvit_core.training.loop import (EMA, TrainRunConfig, autocast, load_checkpoint, seed_step, start_training, train,
                                     write_json)


@dataclass
class ClassifierTrainConfig(TrainRunConfig):
    """Everything that determines a classifier training run (written to train_config.json)."""

    arch: str = DEFAULT_VIT_ARCH
    model_args: dict = field(default_factory=lambda: dict(DEFAULT_VIT_ARGS))
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 0.8
    init: str | None = None  # start from a trained classifier folder (fine-tuning)
    denoiser: str | None = None  # fine-tune on one-shot denoised images from this denoiser
    denoised_fraction: float = 0.5
    sigmas: tuple[float, ...] = (0.12, 0.25, 0.5)
    eval_data: str | None = None  # optional held-out folder, evaluated at the end


def _build_model(cfg: ClassifierTrainConfig, classes: list[str]) -> PixelViT:
    if cfg.init:
        return load_classifier(cfg.init, class_names=classes)
    vit = create_vit(cfg.arch, num_classes=len(classes), model_args=cfg.model_args)
    return PixelViT(vit, mean=CIFAR10_MEAN, std=CIFAR10_STD, class_names=classes)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No decay on biases, norms, position embeddings and tokens (standard for ViTs).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _DenoisedInputs:
    """Replaces a fraction of a batch by one-shot DDS reconstructions (noise, then denoise)."""

    def __init__(self, denoiser_path: str, sigmas: tuple[float, ...], fraction: float, device: torch.device, amp: str):
        from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma

        self.den = load_denoiser(denoiser_path).to(device)
        self.den.unet.eval().requires_grad_(False)
        self.t_stars = [timestep_for_sigma(self.den.alphas_cumprod, s) for s in sigmas]
        self.sigmas, self.fraction, self.device, self.amp = sigmas, fraction, device, amp
        self._denoise = one_shot_denoise

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = int(round(x.shape[0] * self.fraction))
        chunks = torch.arange(n, device=x.device).chunk(len(self.sigmas))
        out = x.clone()
        for idx, sigma, t_star in zip(chunks, self.sigmas, self.t_stars):
            if idx.numel() == 0:
                continue
            noisy = x[idx] + sigma * torch.randn_like(x[idx])
            with autocast(self.device, self.amp):
                out[idx] = self._denoise(self.den, noisy, t_star).float()
        return out


def train_classifier(cfg: ClassifierTrainConfig, *, progress: bool = True) -> Path:
    """Train (or resume) a classifier; returns the output folder holding the EMA model."""
    from timm.data import Mixup

    out, device, images, labels, classes = start_training(cfg, int(cfg.model_args.get("img_size", 32)))
    model = _build_model(cfg, classes).to(device).train()
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob,
                  label_smoothing=cfg.label_smoothing, num_classes=len(classes))
    denoised = _DenoisedInputs(cfg.denoiser, cfg.sigmas, cfg.denoised_fraction, device, cfg.amp) if cfg.denoiser else None
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    meta = load_checkpoint(out, model=model, ema=ema, opt=opt)
    start = meta["step"] if meta else 0
    total = meta["total_steps"] if meta else (cfg.steps or int(cfg.epochs * steps_per_epoch))
    write_json(out / "train_config.json", {**asdict(cfg), "classes": classes, "n_train": len(images)})
    perm_cache: dict[int, torch.Tensor] = {}

    def batch_indices(step: int) -> torch.Tensor:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch not in perm_cache:  # per-epoch permutation from (seed, epoch): resumable exactly
            perm_cache.clear()
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            perm_cache[epoch] = torch.randperm(len(images), generator=g).to(device)
        return perm_cache[epoch][pos * cfg.batch_size:(pos + 1) * cfg.batch_size]

    state = {"total": total, "loss": float("nan")}

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed_step(cfg.seed, step)
        idx = batch_indices(step)
        x = augment_batch(images[idx])
        if denoised is not None:
            x = denoised(x)
        return mixup(x, labels[idx])

    def soft_cross_entropy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sum(-y * F.log_softmax(model(x).float(), dim=-1), dim=-1).mean()

    if not train(batch, soft_cross_entropy, cfg, device=device, meta=meta, start=start, schedule=state, out=out,
                 model=model, ema=ema, opt=opt, progress=progress, name="classifier"):
        return out
    total = state["total"]
    ema.module.eval()
    save_classifier(ema.module, out, model_args=cfg.model_args)
    summary = {"steps": total, "epochs": total / steps_per_epoch}
    if cfg.eval_data:
        summary["eval_accuracy"] = evaluate_accuracy(ema.module, cfg.eval_data, device=device)
    write_json(out / "train_summary.json", summary)
    return out


@torch.no_grad()
def evaluate_accuracy(model: PixelViT, data: str, *, device: torch.device | str = "cpu", batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on an image folder (or torchvision:ROOT test split)."""
    images, labels, _ = load_training_data(data, train=False, size=model.img_size[0])
    model = model.to(device).eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float() / 255.0
        correct += int((model(x).argmax(-1).cpu() == labels[i:i + batch_size]).sum())
    return correct / len(images)
