"""Our attacks (docs/METHOD.md, section 6): PGD as a direct loop, the top-k explanation attack
and the adaptive EOT attack on the FViT, and the projection onto a budget.

- ``pgd``: Madry et al.'s PGD with cross-entropy, step for step and draw for draw
  torchattacks.PGD's algorithm (tests/test_attacks.py checks identical images), so the default
  attack needs no torchattacks import.
- ``topk``: the explanation attack of Ghorbani et al. 2019 ("Interpretation of neural networks is
  fragile"): Linf PGD that minimises the attention mass on the clean top-k patches while a
  cross-entropy penalty keeps the label; returns, per image, the iterate with the least mass among
  those that kept the label. The explanation and its gradient come from
  ``attention.explain(..., differentiable=True)``, so any explanation method can be attacked.
- ``eot_dds``: the adaptive attack on the FViT: Linf PGD on the expectation over DDS noise
  (Athalye et al. 2018, EOT) of the cross-entropy of classifier(one_shot_denoise(x + delta)),
  through :meth:`FaithfulViT.noisy_logits`.

Builders take an :class:`AttackContext` and return ``attack(x, labels) -> x_adv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvit_core.attacks.specs import Norm, ParamValue
from fvit_core.errors import SettingError
from fvit_core.explanations.attention import explain
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.metrics import topk_indices
from fvit_core.models import Denoiser

AttackFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttackContext:
    """What a builder gets: the model, validated parameters, the denoiser and the seed."""

    model: nn.Module
    params: Mapping[str, ParamValue]
    denoiser: Denoiser | None
    seed: int


Builder = Callable[[AttackContext], AttackFn]


def project_to_budget(x_adv: Tensor, x: Tensor, *, norm: Norm, eps: float | None) -> Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x`` (per image) and clamp to [0, 1].

    Linf: each pixel within eps of ``x``; L2: ||x_adv - x||_2 <= eps per image. Clamping after
    projecting keeps the budget because ``x`` itself lies in [0, 1]. ``eps=None`` only clamps.
    """
    if eps is None or norm == "none":
        return x_adv.clamp(0.0, 1.0)
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def budget_excess(x_adv: Tensor, x: Tensor, *, norm: Norm, eps: float | None) -> float:
    """How far ``x_adv`` exceeds the budget (<= 0 when inside), in pixel units."""
    if eps is None or norm == "none":
        return 0.0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "Linf" else delta.norm(dim=1)
    return float(size.max()) - eps if size.numel() else 0.0


def linf_pgd(
    x: Tensor, labels: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], *,
    eps: float, alpha: float, steps: int, random_start: bool,
) -> Tensor:
    """Linf PGD ascent on ``loss_fn(x_adv, labels)`` (Madry et al. 2018), projected each step."""
    x_adv = x.clone()
    if random_start:
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x_adv, labels), x_adv)
        x_adv = project_to_budget(x_adv.detach() + alpha * grad.sign(), x, norm="Linf", eps=eps)
    return x_adv


def build_pgd(ctx: AttackContext) -> AttackFn:
    """Madry et al.'s PGD with cross-entropy: torchattacks.PGD's algorithm, step for step and draw
    for draw (tests/test_attacks.py checks identical images), as a direct loop. The default attack
    then needs no torchattacks import, which takes 0.7 s (docs/PERFORMANCE.md)."""
    p, model = ctx.params, ctx.model

    def attack(x: Tensor, labels: Tensor) -> Tensor:
        return linf_pgd(x, labels, lambda x_adv, y: F.cross_entropy(model(x_adv), y), eps=float(p["eps"]),
                         alpha=float(p["alpha"]), steps=int(p["steps"]), random_start=bool(p["random_start"]))

    return attack


def build_eot_dds(ctx: AttackContext) -> AttackFn:
    p = ctx.params
    assert ctx.denoiser is not None  # run_attack checks needs_denoiser
    fvit = FaithfulViT(ctx.model, ctx.denoiser, float(p["sigma"]), mode="dds")
    n_eot = int(p["n_eot"])

    def expected_loss(x_adv: Tensor, labels: Tensor) -> Tensor:
        # The FViT's own draws: n_eot noisy copies in one batch, the noise outside the denoiser.
        return F.cross_entropy(fvit.noisy_logits(x_adv, n_eot), labels.repeat(n_eot))

    def attack(x: Tensor, labels: Tensor) -> Tensor:
        return linf_pgd(x, labels, expected_loss, eps=float(p["eps"]), alpha=float(p["alpha"]),
                         steps=int(p["steps"]), random_start=bool(p["random_start"]))

    return attack


def topk_mask(weights: Tensor, k: int) -> Tensor:
    """(B, P) float mask of T_k(w) (metrics.topk_indices: k largest per row, ties to the lower index)."""
    order = torch.from_numpy(topk_indices(weights.detach().cpu().numpy(), k)).to(weights.device)
    return torch.zeros_like(weights).scatter_(1, order, 1.0)


def build_topk(ctx: AttackContext) -> AttackFn:
    p, model = ctx.params, ctx.model
    eps, alpha, steps, k = float(p["eps"]), float(p["alpha"]), int(p["steps"]), int(p["k"])
    label_weight, method, fusion = float(p["label_weight"]), str(p["method"]), str(p["head_fusion"])

    def evaluate(x_adv: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out = explain(model, x_adv, method=method, head_fusion=fusion, differentiable=True)
        return (out.attention * mask).sum(dim=1), out.logits

    def attack(x: Tensor, labels: Tensor) -> Tensor:
        clean = explain(model, x, method=method, head_fusion=fusion)
        num_patches = clean.attention.shape[1]
        if k > num_patches:
            raise SettingError(f"k={k} exceeds the {num_patches} patches of this model; pick k <= {num_patches}")
        mask = topk_mask(clean.attention, k)
        best, best_mass = x.clone(), (clean.attention * mask).sum(dim=1)
        x_adv = x.clone()
        for step in range(steps + 1):
            x_adv.requires_grad_(True)
            mass, logits = evaluate(x_adv, mask)
            # Ghorbani et al.: keep the perturbation with the least top-k mass that keeps the label.
            better = (logits.argmax(dim=1) == labels) & (mass.detach() < best_mass)
            best = torch.where(better.view(-1, 1, 1, 1), x_adv.detach(), best)
            best_mass = torch.where(better, mass.detach(), best_mass)
            if step == steps:
                break
            loss = mass.sum() + label_weight * F.cross_entropy(logits, labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project_to_budget(x_adv.detach() - alpha * grad.sign(), x, norm="Linf", eps=eps)
        return best

    return attack


def build_identity(ctx: AttackContext) -> AttackFn:
    return lambda x, labels: x.clone()
