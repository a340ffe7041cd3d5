"""Running an attack: the one entry point, :func:`run_attack`.

It validates the parameters against the attack's spec (attacks.specs), defaults the labels to the
model's own predictions (the transfer setting: craft on the vanilla ViT), seeds a private RNG
scope, switches autograd on even under ``torch.inference_mode()``, restores the model's train
flags and parameter gradients, and projects the result onto the budget and [0, 1].
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from fvit_core.attacks import ours
from fvit_core.attacks.ours import AttackContext, Builder, budget_excess, project_to_budget
from fvit_core.attacks.specs import ATTACKS, Norm, get_attack
from fvit_core.attacks.torchattacks_adapter import build_autoattack, torchattacks_builder
from fvit_core.data.pixels import check_pixels, is_uniform_rescale
from fvit_core.errors import InputError, SettingError
from fvit_core.models import Denoiser

# After projection the budget holds up to float32 rounding of x + delta (about 6e-8 at 1.0);
# anything larger means an attack or projection bug.
BUDGET_ATOL = 1e-6
_ATTACK_LOCK = threading.RLock()

# How each attack of attacks.specs.ATTACKS is built.
BUILDERS: dict[str, Builder] = {
    "none": ours.build_identity,
    "fgsm": torchattacks_builder("FGSM"),
    "pgd": ours.build_pgd,
    "pgdl2": torchattacks_builder("PGDL2"),
    "cw": torchattacks_builder("CW"),
    "deepfool": torchattacks_builder("DeepFool"),
    "apgd": torchattacks_builder("APGD", seeded=True, norm="Linf"),
    "autoattack": build_autoattack,
    "square": torchattacks_builder("Square", seeded=True, norm="Linf"),
    "mifgsm": torchattacks_builder("MIFGSM"),
    "eotpgd": torchattacks_builder("EOTPGD"),
    "gn": torchattacks_builder("GN"),
    "topk": ours.build_topk,
    "eot_dds": ours.build_eot_dds,
}
assert tuple(BUILDERS) == tuple(ATTACKS)


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode; restore every submodule's own training flag afterwards."""
    saved = [(m, m.training) for module in modules if module is not None for m in module.modules()]
    for module in modules:
        if module is not None:
            module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


@contextlib.contextmanager
def _keep_param_grads(*modules: nn.Module | None) -> Iterator[None]:
    """Restore parameters' ``.grad``: CW, DeepFool and FAB call backward(), which accumulates there."""
    params = [p for module in modules if module is not None for p in module.parameters()]
    saved = [p.grad for p in params]
    try:
        yield
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNGs inside a fork: torchattacks draws from them (and APGD/Square reseed
    them), and the caller's RNG state must come back untouched."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _check_images(x: Tensor) -> Tensor:
    """Validate a (B, 3, H, W) float batch in [0, 1]; return a detached copy usable by autograd."""
    if not isinstance(x, Tensor):
        raise InputError(f"expected a torch.Tensor of pixels, got {type(x).__name__}")
    check_pixels(x, batched=True)
    return x.detach().clone()  # a clone made outside inference mode is a normal tensor


def _resolve_labels(model: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
    """Labels as a (B,) long tensor; default the model's own predictions on ``x``."""
    with torch.no_grad():
        logits = model(x)
    if labels is None:
        return logits.argmax(dim=1)
    labels = torch.as_tensor(labels, device=x.device)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (x.shape[0],):
        raise InputError(f"labels must be {x.shape[0]} integer class indices, got {labels.dtype} {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels >= logits.shape[1])).any()):
        raise InputError(f"labels must lie in 0..{logits.shape[1] - 1}, got {labels.tolist()}")
    return labels.long().clone()


def run_attack(
    name: str,
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    params: Mapping[str, object] | None = None,
    *,
    denoiser: Denoiser | None = None,
    seed: int | None = None,
) -> Tensor:
    """Perturb pixels ``x`` (B, 3, H, W) in [0, 1] with the attack ``name`` from :data:`ATTACKS`.

    Args:
        model: the classifier (PixelViT, normalisation inside); in the transfer setting the
            vanilla ViT. Its train flags and parameter gradients are restored afterwards.
        labels: (B,) classes to move away from; default the model's predictions on ``x``.
        params: overrides of the spec's defaults, validated (ValueError with the allowed range).
        denoiser: required by attacks with ``needs_denoiser`` (eot_dds).
        seed: makes the result reproducible; torch's global RNG state is left untouched.
            None draws a fresh seed.

    Returns a detached tensor like ``x``, in [0, 1], within the budget (Linf: |x_adv - x| <=
    eps per pixel; L2: ||x_adv - x||_2 <= eps per image) up to :data:`BUDGET_ATOL`. Works under
    ``torch.inference_mode()`` and ``torch.no_grad()``.
    """
    spec = get_attack(name)
    resolved = spec.resolve(params)
    if spec.needs_denoiser and denoiser is None:
        raise SettingError(f"attack {name!r} differentiates through the DDS denoiser: pass denoiser=...")
    seed = secrets.randbits(62) if seed is None else int(seed)
    eps = spec.budget(resolved)
    with torch.inference_mode(False), torch.enable_grad():
        x_clean = _check_images(x)
        expected = getattr(model, "img_size", None)
        if expected is not None and not is_uniform_rescale(tuple(x_clean.shape[-2:]), tuple(expected)):
            raise InputError(f"the classifier takes {expected[0]}x{expected[1]} pixels (or a uniform rescale: the "
                             f"smoothing space), got images of shape {tuple(x_clean.shape)}; prepare them first "
                             "(images.prepare_image)")
        unet = denoiser.unet if denoiser is not None else None
        # One attack at a time per process: torchattacks draws from torch's global RNG (seeded
        # here), and train flags / parameter grads of the shared model are saved and restored, so
        # two threads attacking at once would see each other's RNG state and gradients.
        with _ATTACK_LOCK, _eval_mode(model, unet), _keep_param_grads(model, unet), _seeded(seed):
            labels = _resolve_labels(model, x_clean, labels)
            if eps == 0.0:
                x_adv = x_clean.clone()
            else:
                x_adv = BUILDERS[name](AttackContext(model, resolved, denoiser, seed))(x_clean, labels).detach()
        return _finish(x_adv, x_clean, spec.norm, eps, name)


def _finish(x_adv: Tensor, x: Tensor, norm: Norm, eps: float | None, name: str) -> Tensor:
    """Project onto the budget and [0, 1], then check that it holds (fails loudly on a bug)."""
    if x_adv.shape != x.shape or not bool(torch.isfinite(x_adv).all()):
        raise RuntimeError(f"attack {name!r} returned {tuple(x_adv.shape)} with non-finite values or wrong shape")
    x_adv = project_to_budget(x_adv.to(x.dtype), x, norm=norm, eps=eps)
    excess = budget_excess(x_adv, x, norm=norm, eps=eps)
    if excess > BUDGET_ATOL or float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
        raise RuntimeError(f"attack {name!r}: output exceeds the {norm} budget {eps} by {excess:.3g} after projection")
    return x_adv
