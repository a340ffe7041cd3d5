"""Shared training machinery: device/precision choice, resumable checkpoints (safetensors, no
pickle), a step budget fitted to a wall-clock budget, and the progress bar.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from fvit_core.errors import SettingError

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainRunConfig:
    """The settings every training run shares: data, schedule, optimiser, precision, checkpoints."""

    data: str
    out: str
    epochs: float = 100.0
    steps: int | None = None  # overrides epochs
    time_budget_s: float | None = None  # fits the step count to a wall-clock budget (first run only)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 500
    ema_decay: float = 0.9995
    seed: int = 0
    device: str = "auto"
    amp: str = "bf16"
    checkpoint_every_s: float = 120.0
    stop_after_steps: int | None = None  # end this invocation early (checkpointed; run again to resume)


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, amp: str):
    """bfloat16 autocast on CUDA when asked; float32 otherwise (CPU bf16 training is slower here)."""
    if amp == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def cosine_lr(step: int, total: int, base_lr: float, warmup: int, min_ratio: float = 0.01) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{name}"] = value
    return tensors, meta


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    folder: Path, *, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, step: int, total_steps: int, extra: dict
) -> None:
    """Write model, EMA and optimizer state atomically to folder/checkpoint.safetensors."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    meta = {"step": step, "total_steps": total_steps, "optimizer": opt_meta, "extra": extra,
            "rng": torch.get_rng_state().tolist()}
    from fvit_core.data.files import atomic_write

    atomic_write(folder / CHECKPOINT, lambda tmp: save_file(tensors, str(tmp), metadata={"fvit": json.dumps(meta)}))


def load_checkpoint(folder: Path, *, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    """Restore from folder/checkpoint.safetensors if present; returns its metadata or None."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["fvit"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    _unflatten_optimizer(opt, tensors, meta["optimizer"])
    torch.set_rng_state(torch.tensor(meta["rng"], dtype=torch.uint8))
    return meta


class EMA(nn.Module):
    """Exponential moving average of a model's weights (decay warmed up as in timm's ModelEmaV3)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        import copy

        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm-up keeps early EMA weights from being dominated by the random initialisation.
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)  # one fused op, not one per tensor
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)


def seed_step(seed: int, step: int) -> None:
    """Seed torch's and numpy's global RNGs from (seed, step): a resumed run draws exactly the
    augmentations, mixing and noise that an uninterrupted run would have drawn at that step."""
    import numpy as np

    value = (seed * 1_000_003 + step) % (2**31)
    torch.manual_seed(value)
    np.random.seed(value)


def fit_steps_to_budget(step_fn: Callable[[int], float], *, probe_steps: int, budget_s: float, reserve_s: float = 0.0) -> int:
    """Run ``probe_steps`` warm steps and return how many steps fit in ``budget_s`` seconds in all.

    The first few steps (kernel selection, allocator warm-up) are excluded from the rate.
    """
    start = time.perf_counter()
    skip = min(5, probe_steps // 2)
    for i in range(probe_steps):
        if i == skip:
            _sync()
            timed_start = time.perf_counter()
        step_fn(i)
    _sync()  # CUDA runs asynchronously: time the work, not the launches
    per_step = (time.perf_counter() - timed_start) / max(1, probe_steps - skip)
    remaining = budget_s - (time.perf_counter() - start) - reserve_s
    return probe_steps + max(0, int(remaining / per_step))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def write_json(path: Path, data: dict) -> None:
    from fvit_core.data.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def start_training(cfg: TrainRunConfig, size: int) -> tuple[Path, torch.device, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """What both trainers do first: the output folder, the device, the global seed, and the
    training images at ``size`` px on the device: (out, device, images uint8, labels, classes)."""
    from fvit_core.training.data import load_training_data

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    images, labels, classes = load_training_data(cfg.data, size=size)
    return out, device, images.to(device), labels.to(device), classes


def optimizer_step(loss: torch.Tensor, model: nn.Module, opt: torch.optim.Optimizer, ema: "EMA", step: int) -> None:
    """One update of both trainers: backward, gradients clipped at norm 1.0, the optimiser step,
    then the EMA of the weights."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema.update(model, step)


def set_learning_rate(opt: torch.optim.Optimizer, step: int, total: int, cfg: TrainRunConfig) -> None:
    """The cosine schedule with warm-up (cosine_lr) for ``step`` of ``total``."""
    for group in opt.param_groups:
        group["lr"] = cosine_lr(step, total, cfg.lr, cfg.warmup_steps)


def train(batch: Callable[[int], tuple], loss: Callable[..., torch.Tensor], cfg: TrainRunConfig, *,
          device: torch.device, meta: dict | None, start: int, schedule: dict, out: Path, model: nn.Module,
          ema: "EMA", opt: torch.optim.Optimizer, progress: bool, name: str) -> bool:
    """The training loop of both trainers: for each step, ``batch(step)`` prepares the inputs,
    the learning rate follows the schedule, ``loss(*inputs)`` runs under autocast, then one
    optimizer_step. A fresh run with ``cfg.time_budget_s`` first fits the schedule's length to
    the budget (a few probe steps set ``schedule["total"]``); the steps run with checkpoints
    (run_steps). Returns False when stopped early by ``cfg.stop_after_steps``."""

    def step_fn(step: int) -> torch.Tensor:
        inputs = batch(step)
        set_learning_rate(opt, step, schedule["total"], cfg)
        with autocast(device, cfg.amp):
            value = loss(*inputs)
        optimizer_step(value, model, opt, ema, step)
        return value

    total = schedule["total"]
    if cfg.time_budget_s and not meta and not cfg.steps:
        total = fit_steps_to_budget(step_fn, probe_steps=min(60, total), budget_s=cfg.time_budget_s)
        schedule["total"], start = total, min(60, total)
    return run_steps(step_fn, start, total, out, model, ema, opt, cfg.checkpoint_every_s, progress, name,
                     cfg.stop_after_steps)


def run_steps(step_fn, start, total, out, model, ema, opt, every_s, progress, name, stop_after=None) -> bool:
    """Run steps start..total-1 with checkpoints; False when stopped early by ``stop_after``."""
    last_ckpt = time.perf_counter()
    end = total if stop_after is None else min(total, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=total, disable=not progress, desc=f"train {name}",
               mininterval=2.0, smoothing=0.05)
    running = None
    for step in bar:
        loss = step_fn(step)
        if step % 50 == 0 or step == total - 1:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise SettingError(f"training loss became {value} at step {step}; lower --lr")
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.4f}")
        if time.perf_counter() - last_ckpt > every_s:
            save_checkpoint(out, model=model, ema=ema, opt=opt, step=step + 1, total_steps=total, extra={})
            last_ckpt = time.perf_counter()
    save_checkpoint(out, model=model, ema=ema, opt=opt, step=end, total_steps=total, extra={})
    return end == total
