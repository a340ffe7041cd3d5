"""Attack registry: torchattacks attacks and our own, with typed parameters a UI can render.

docs/METHOD.md, section 6. Every attack works in [0, 1] pixel space on a model whose first layer
normalises (PixelViT), so budgets are pixel units (eps = 8/255 for Linf, 0.5 for L2) and
torchattacks' ``set_normalization_used`` is never called.

- ``ATTACKS`` maps a name to an :class:`AttackSpec`: label, distance measure, typed
  :class:`ParamSpec` parameters (bounds, step, display unit), a description and a builder.
- :func:`run_attack` is the one entry point: it validates parameters, defaults the labels to the
  model's own predictions (the transfer setting: craft on the vanilla ViT), seeds a private RNG
  scope, switches autograd on even under ``torch.inference_mode()``, restores the model's train
  flags and parameter gradients, and projects the result onto the budget and [0, 1].

Our attacks:
- ``topk``: the explanation attack of Ghorbani et al. 2019 ("Interpretation of neural networks is
  fragile"): Linf PGD that minimises the attention mass on the clean top-k patches while a
  cross-entropy penalty keeps the label; returns, per image, the iterate with the least mass among
  those that kept the label. The explanation and its gradient come from
  ``attention.explain(..., differentiable=True)``, so any explanation method can be attacked.
- ``eot_dds``: the adaptive attack on the FViT: Linf PGD on the expectation over DDS noise
  (Athalye et al. 2018, EOT) of the cross-entropy of classifier(one_shot_denoise(x + delta)).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvit_core.data.pixels import check_pixels
from fvit_core.errors import InputError, SettingError
from fvit_core.explanations.attention import EXPLANATION_METHODS, HEAD_FUSIONS, explain
from fvit_core.protocol.limits import short_repr as _short
from fvit_core.analysis.metrics import topk_indices
from fvit_core.models import Denoiser
from fvit_core.method.pixel_space import is_uniform_rescale

ParamKind = Literal["float", "int", "choice", "bool"]
ParamValue = float | int | str | bool
Norm = Literal["Linf", "L2", "none"]
AttackFn = Callable[[Tensor, Tensor], Tensor]

# After projection the budget holds up to float32 rounding of x + delta (about 6e-8 at 1.0);
# anything larger means an attack or projection bug.
BUDGET_ATOL = 1e-6
_ATTACK_LOCK = threading.RLock()
_BOUND_RTOL = 1e-9  # lets 64/255 computed two ways pass a max of 64/255


# --------------------------------------------------------------------------------------------
# Parameter and attack records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One attack parameter, enough for a UI to build its widget.

    ``default``, ``min``, ``max`` and ``step`` are in the value's own units (pixels in [0, 1]);
    ``unit="/255"`` means a UI should show ``value * 255`` (see :attr:`display_scale`).
    ``choices`` lists the allowed values of a ``"choice"`` parameter.
    """

    name: str
    kind: ParamKind
    default: ParamValue
    min: float | None = None
    max: float | None = None
    step: float | None = None
    unit: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def display_scale(self) -> float:
        """Factor from the stored value to the number a UI shows (255 for ``unit="/255"``)."""
        return 255.0 if self.unit == "/255" else 1.0

    def validate(self, value: object) -> ParamValue:
        """Return ``value`` coerced to this parameter's kind; ValueError saying what is allowed."""
        if self.kind == "bool":
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise SettingError(f"{self.name} must be true or false, got {value!r}")
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return value
            raise SettingError(f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}")
        number = self._as_number(value)
        self._check_bounds(number)
        return number

    def _as_number(self, value: object) -> float | int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise SettingError(f"{self.name} must be a number ({self.kind}), got {_short(value)}")
        try:
            finite = math.isfinite(float(value))
        except OverflowError:  # an integer too large for a float (a 400-digit setting)
            finite = False
        if not finite:
            raise SettingError(f"{self.name} must be finite (a number in {self.min}..{self.max}), got {_short(value)}")
        if self.kind == "float":
            return float(value)
        if isinstance(value, numbers.Integral) or float(value).is_integer():
            return int(value)
        raise SettingError(f"{self.name} must be a whole number, got {value!r}")

    def _check_bounds(self, number: float | int) -> None:
        low = -math.inf if self.min is None else self.min
        high = math.inf if self.max is None else self.max
        slack = _BOUND_RTOL * max(1.0, abs(low), abs(high) if math.isfinite(high) else 1.0)
        if low - slack <= number <= high + slack:
            return
        message = f"{self.name}={number!r} is outside the allowed range [{_fmt(low)}, {_fmt(high)}]"
        if self.unit == "/255":
            scale = self.display_scale
            message += f" (shown as {_fmt(number * scale)}/255; allowed {_fmt(low * scale)}..{_fmt(high * scale)} /255)"
        raise SettingError(message)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


@dataclass(frozen=True)
class AttackContext:
    """What a builder gets: the model, validated parameters, the denoiser and the seed."""

    model: nn.Module
    params: Mapping[str, ParamValue]
    denoiser: Denoiser | None
    seed: int


Builder = Callable[[AttackContext], AttackFn]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: registry key; label: human name; norm: the distance measure (``"none"`` for the
            identity and Gaussian noise).
        params: typed parameters; an ``eps`` parameter is the budget that :func:`run_attack`
            enforces by projection (attacks without one, CW and DeepFool, are minimum-norm
            attacks and are only clamped to [0, 1]).
        description: paper, distance measure, defaults with units, input range.
        needs_denoiser: the attack differentiates through the DDS denoiser.
        builder: ``builder(context) -> attack(x, labels) -> x_adv``.
        derived: parameters computed from the others when not given (the Linf step size
            alpha = eps / 5, the paper's PGD rule): ``(name, rule(resolved params) -> value)``,
            applied by :meth:`resolve`, so every caller (run_attack, the fronts) gets them.
        follows: parameters that, when not given, take the value of the analysis setting of the
            same name (the adaptive attack's ``sigma``, the top-k attack's ``k``, ``method`` and
            ``head_fusion``): see :func:`attack_arguments`.
    """

    name: str
    label: str
    norm: Norm
    params: tuple[ParamSpec, ...]
    description: str
    builder: Builder = field(repr=False, compare=False)
    needs_denoiser: bool = False
    derived: tuple[tuple[str, Callable[[Mapping[str, ParamValue]], ParamValue]], ...] = field(
        default=(), repr=False, compare=False)
    follows: tuple[str, ...] = ()

    def param(self, name: str) -> ParamSpec:
        """The ParamSpec called ``name``; ValueError listing the valid names otherwise."""
        for spec in self.params:
            if spec.name == name:
                return spec
        valid = ", ".join(p.name for p in self.params) or "none"
        raise SettingError(f"attack {self.name!r} has no parameter {name!r}; its parameters: {valid}")

    def defaults(self) -> dict[str, ParamValue]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: Mapping[str, object] | None) -> dict[str, ParamValue]:
        """Defaults overridden by ``params``, each validated against its ParamSpec; then the
        :attr:`derived` parameters not in ``params`` computed from the result (PGD with
        ``{"eps": 16/255}`` steps by alpha = 3.2/255)."""
        if params is not None and not isinstance(params, Mapping):
            raise SettingError(f"params must be a mapping of name -> value, got {type(params).__name__}")
        resolved = self.defaults()
        for name, value in (params or {}).items():
            resolved[name] = self.param(name).validate(value)
        for name, rule in self.derived:
            if name not in (params or {}):
                resolved[name] = self.param(name).validate(rule(resolved))
        return resolved

    def budget(self, params: Mapping[str, ParamValue]) -> float | None:
        """The enforced radius (``eps``) in pixel units, or None for unbounded attacks."""
        if self.norm == "none" or "eps" not in params:
            return None
        return float(params["eps"])


# --------------------------------------------------------------------------------------------
# Parameter templates (pixel units; the paper's budgets are 2..32 /255)
# --------------------------------------------------------------------------------------------


def _eps_linf(default: float = 8 / 255) -> ParamSpec:
    return ParamSpec("eps", "float", default, 0.0, 64 / 255, 1 / 255, "/255", "Linf budget: max change of any pixel")


def _alpha_linf(default: float = 8 / 255 / 5) -> ParamSpec:
    return ParamSpec("alpha", "float", default, 0.0, 32 / 255, 0.1 / 255, "/255", "step size per iteration")


def _linf_steps() -> tuple[ParamSpec, ParamSpec, ParamSpec]:
    """eps, alpha and steps of the iterative Linf attacks (alpha derived as eps / 5 unless given)."""
    return (_eps_linf(), _alpha_linf(), _steps())


def _eps_l2(default: float = 0.5) -> ParamSpec:
    return ParamSpec("eps", "float", default, 0.0, 10.0, 0.05, "", "L2 budget: max L2 norm of the perturbation per image")


def _steps(default: int = 10, high: int = 1000) -> ParamSpec:
    return ParamSpec("steps", "int", default, 1, high, 1, "", "number of iterations")


def _random_start(default: bool = True) -> ParamSpec:
    return ParamSpec("random_start", "bool", default, help="start from a uniform random point in the budget")


# --------------------------------------------------------------------------------------------
# Builders: torchattacks
# --------------------------------------------------------------------------------------------


def _torchattacks(class_name: str, *, seeded: bool = False, **fixed: Any) -> Builder:
    """Builder for ``torchattacks.<class_name>(model, **fixed, **params)``.

    ``seeded`` passes our seed to attacks that reseed the global RNG themselves (APGD, Square).
    """

    def build(ctx: AttackContext) -> AttackFn:
        import torchattacks

        extra = {"seed": ctx.seed} if seeded else {}
        return getattr(torchattacks, class_name)(ctx.model, **fixed, **extra, **ctx.params)

    return build


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if not isinstance(n, int) or n < 2:
        raise ValueError("AutoAttack needs model.num_classes (>= 2); wrap the ViT in PixelViT")
    return n


def _build_autoattack(ctx: AttackContext) -> AttackFn:
    import torchattacks

    eps, version, n_classes = float(ctx.params["eps"]), str(ctx.params["version"]), _num_classes(ctx.model)
    if version == "fast":
        # The first two attacks of the standard ensemble, each run on the points still correct.
        return torchattacks.MultiAttack([
            torchattacks.APGD(ctx.model, norm="Linf", eps=eps, seed=ctx.seed, loss="ce", n_restarts=1),
            torchattacks.APGDT(ctx.model, norm="Linf", eps=eps, seed=ctx.seed, n_classes=n_classes, n_restarts=1),
        ])
    return torchattacks.AutoAttack(ctx.model, norm="Linf", eps=eps, version=version, n_classes=n_classes, seed=ctx.seed)


# --------------------------------------------------------------------------------------------
# Builders: ours
# --------------------------------------------------------------------------------------------


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


def _linf_pgd(
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


def _build_pgd(ctx: AttackContext) -> AttackFn:
    """Madry et al.'s PGD with cross-entropy: torchattacks.PGD's algorithm, step for step and draw
    for draw (tests/test_attacks.py checks identical images), as a direct loop. The default attack
    then needs no torchattacks import, which takes 0.7 s (docs/PERFORMANCE.md)."""
    p, model = ctx.params, ctx.model

    def attack(x: Tensor, labels: Tensor) -> Tensor:
        return _linf_pgd(x, labels, lambda x_adv, y: F.cross_entropy(model(x_adv), y), eps=float(p["eps"]),
                         alpha=float(p["alpha"]), steps=int(p["steps"]), random_start=bool(p["random_start"]))

    return attack


def _build_eot_dds(ctx: AttackContext) -> AttackFn:
    from fvit_core.method.faithful_vit import FaithfulViT

    p = ctx.params
    assert ctx.denoiser is not None  # run_attack checks needs_denoiser
    fvit = FaithfulViT(ctx.model, ctx.denoiser, float(p["sigma"]), mode="dds")
    n_eot = int(p["n_eot"])

    def expected_loss(x_adv: Tensor, labels: Tensor) -> Tensor:
        # The FViT's own draws: n_eot noisy copies in one batch, the noise outside the denoiser.
        return F.cross_entropy(fvit.noisy_logits(x_adv, n_eot), labels.repeat(n_eot))

    def attack(x: Tensor, labels: Tensor) -> Tensor:
        return _linf_pgd(x, labels, expected_loss, eps=float(p["eps"]), alpha=float(p["alpha"]),
                         steps=int(p["steps"]), random_start=bool(p["random_start"]))

    return attack


def topk_mask(weights: Tensor, k: int) -> Tensor:
    """(B, P) float mask of T_k(w) (metrics.topk_indices: k largest per row, ties to the lower index)."""
    order = torch.from_numpy(topk_indices(weights.detach().cpu().numpy(), k)).to(weights.device)
    return torch.zeros_like(weights).scatter_(1, order, 1.0)


def _build_topk(ctx: AttackContext) -> AttackFn:
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


def _build_identity(ctx: AttackContext) -> AttackFn:
    return lambda x, labels: x.clone()


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

_RANGE = "Input: (B, 3, H, W) pixels in [0, 1]; output in [0, 1]."


# The paper's PGD step: alpha = eps / 5, for every Linf attack with a step size (unless given).
_STEP_RULE: tuple[tuple[str, Callable[[Mapping[str, ParamValue]], ParamValue]], ...] = (
    ("alpha", lambda p: float(p["eps"]) / 5.0),)


def _spec(name: str, label: str, norm: Norm, params: tuple[ParamSpec, ...], description: str,
          builder: Builder, needs_denoiser: bool = False, follows: tuple[str, ...] = ()) -> AttackSpec:
    names = {p.name for p in params}
    derived = _STEP_RULE if norm == "Linf" and {"eps", "alpha"} <= names else ()
    return AttackSpec(name, label, norm, params, f"{description} {_RANGE}", builder, needs_denoiser, derived, follows)


_SPECS: tuple[AttackSpec, ...] = (
    _spec("none", "No attack", "none", (), "Identity: the clean image.", _build_identity),
    _spec(
        "fgsm", "FGSM", "Linf", (_eps_linf(),),
        "Fast Gradient Sign Method, Goodfellow et al. 2015, 'Explaining and harnessing adversarial "
        "examples'. Distance: Linf. One step of size eps along the sign of the loss gradient. "
        "Defaults: eps 8/255.",
        _torchattacks("FGSM"),
    ),
    _spec(
        "pgd", "PGD (Linf)", "Linf", (*_linf_steps(), _random_start()),
        "Projected Gradient Descent, Madry et al. 2018, 'Towards deep learning models resistant to "
        "adversarial attacks'. Distance: Linf. The paper's setting: eps 8/255, step alpha = eps/5 "
        "= 1.6/255, 10 steps, random start.",
        _build_pgd,
    ),
    _spec(
        "pgdl2", "PGD (L2)", "L2",
        (_eps_l2(), ParamSpec("alpha", "float", 0.1, 0.0, 5.0, 0.01, "", "step size (L2 norm) per iteration"),
         _steps(), _random_start()),
        "Projected Gradient Descent in L2, Madry et al. 2018. Distance: L2 per image. Defaults: "
        "eps 0.5, alpha 0.1 (eps/5), 10 steps, random start.",
        _torchattacks("PGDL2"),
    ),
    _spec(
        "cw", "Carlini-Wagner L2", "L2",
        (ParamSpec("c", "float", 1.0, 1e-4, 1e4, 0.1, "", "weight of the misclassification term"),
         ParamSpec("kappa", "float", 0.0, 0.0, 100.0, 0.1, "", "confidence margin (logits)"),
         _steps(50),
         ParamSpec("lr", "float", 0.01, 1e-5, 1.0, 0.001, "", "Adam learning rate (tanh space)")),
        "Carlini & Wagner 2017, 'Towards evaluating the robustness of neural networks'. Distance: "
        "L2, minimum-norm (no budget: the perturbation is as small as the optimiser finds; images "
        "it cannot fool come back unchanged). Defaults: c 1, kappa 0, 50 steps, lr 0.01.",
        _torchattacks("CW"),
    ),
    _spec(
        "deepfool", "DeepFool", "L2",
        (_steps(50), ParamSpec("overshoot", "float", 0.02, 0.0, 1.0, 0.01, "", "step beyond the boundary")),
        "Moosavi-Dezfooli et al. 2016, 'DeepFool: a simple and accurate method to fool deep neural "
        "networks'. Distance: L2, minimum-norm (no budget). Defaults: 50 steps, overshoot 0.02.",
        _torchattacks("DeepFool"),
    ),
    _spec(
        "apgd", "APGD", "Linf",
        (_eps_linf(), _steps(),
         ParamSpec("n_restarts", "int", 1, 1, 20, 1, "", "random restarts"),
         ParamSpec("loss", "choice", "ce", choices=("ce", "dlr"), help="cross-entropy or difference of logits ratio")),
        "Auto-PGD, Croce & Hein 2020, 'Reliable evaluation of adversarial robustness with an "
        "ensemble of diverse parameter-free attacks'. Distance: Linf. Step size adapted "
        "automatically. Defaults: eps 8/255, 10 steps, 1 restart, loss ce.",
        _torchattacks("APGD", seeded=True, norm="Linf"),
    ),
    _spec(
        "autoattack", "AutoAttack", "Linf",
        (_eps_linf(),
         ParamSpec("version", "choice", "fast", choices=("fast", "standard", "plus", "rand"),
                   help="fast: APGD-CE + APGD-T; standard adds FAB-T and Square (5000 queries, slow)")),
        "AutoAttack, Croce & Hein 2020 (same paper as APGD). Distance: Linf. An ensemble run in "
        "sequence on the images still classified correctly; n_classes is taken from the model. "
        "version 'fast' (default, ours, for interactive use): APGD-CE then APGD-T (targeted, every "
        "other class), 10 steps each; 'standard': APGD-CE, APGD-T, FAB-T, Square with 5000 queries; "
        "'plus': 5 restarts and more attacks; 'rand': APGD-CE/DLR with 20 EOT samples (for "
        "randomised defences). standard, plus and rand can take minutes per image on CPU when the "
        "model resists (measured on a tiny ViT: seconds to over 10 minutes for 2 images). "
        "Defaults: eps 8/255, version fast.",
        _build_autoattack,
    ),
    _spec(
        "square", "Square", "Linf",
        (_eps_linf(), ParamSpec("n_queries", "int", 1000, 1, 10000, 1, "", "model queries per image")),
        "Square Attack, Andriushchenko et al. 2020, 'Square attack: a query-efficient black-box "
        "adversarial attack via random search'. Distance: Linf. Gradient-free (margin loss); stops "
        "per image once fooled. Defaults: eps 8/255, 1000 queries (torchattacks' default is 5000).",
        _torchattacks("Square", seeded=True, norm="Linf"),
    ),
    _spec(
        "mifgsm", "MI-FGSM", "Linf",
        (*_linf_steps(),
         ParamSpec("decay", "float", 1.0, 0.0, 2.0, 0.1, "", "momentum decay factor")),
        "Momentum Iterative FGSM, Dong et al. 2018, 'Boosting adversarial attacks with momentum'. "
        "Distance: Linf. Defaults: eps 8/255, alpha eps/5 (1.6/255), 10 steps, decay 1.0.",
        _torchattacks("MIFGSM"),
    ),
    _spec(
        "eotpgd", "EOT-PGD", "Linf",
        (*_linf_steps(),
         ParamSpec("eot_iter", "int", 2, 1, 64, 1, "", "gradient samples averaged per step"),
         _random_start()),
        "PGD with Expectation over Transformation, Athalye et al. 2018, 'Synthesizing robust "
        "adversarial examples' / 'Obfuscated gradients give a false sense of security'. Distance: "
        "Linf. Averages the gradient of the (possibly random) model over eot_iter calls; on a "
        "deterministic ViT it equals PGD (for the DDS noise use eot_dds). Defaults: eps 8/255, "
        "alpha eps/5 (1.6/255), 10 steps, eot_iter 2, random start.",
        _torchattacks("EOTPGD"),
    ),
    _spec(
        "gn", "Gaussian noise", "none",
        (ParamSpec("std", "float", 0.1, 0.0, 1.0, 0.01, "", "noise standard deviation in pixel units"),),
        "Additive Gaussian noise N(0, std^2) per pixel, clipped to [0, 1]: a non-adversarial "
        "baseline (torchattacks GN). No budget. Default: std 0.1.",
        _torchattacks("GN"),
    ),
    _spec(
        "topk", "Top-k explanation attack", "Linf",
        (*_linf_steps(),
         ParamSpec("k", "int", 8, 1, 1024, 1, "", "size of the clean top-k patch set T_k(w(x))"),
         ParamSpec("label_weight", "float", 1.0, 0.0, 100.0, 0.1, "", "weight of the cross-entropy that keeps the label"),
         ParamSpec("method", "choice", "raw", choices=EXPLANATION_METHODS, help="explanation method w(x) attacked"),
         ParamSpec("head_fusion", "choice", "mean", choices=HEAD_FUSIONS, help="fusion of attention heads")),
        "Top-k explanation attack after Ghorbani et al. 2019, 'Interpretation of neural networks "
        "is fragile'. Distance: Linf. PGD descent (no random start) on attention mass on the "
        "clean top-k patches + label_weight * cross-entropy of the clean label; returns per image "
        "the iterate with the least top-k mass among those that keep the label (the clean image "
        "if none does). Defaults: eps 8/255, alpha 1.6/255, 10 steps, k 8, label_weight 1, raw "
        "attention, mean over heads.",
        _build_topk, follows=("k", "method", "head_fusion"),
    ),
    _spec(
        "eot_dds", "Adaptive EOT attack on DDS", "Linf",
        (*_linf_steps(),
         ParamSpec("n_eot", "int", 4, 1, 64, 1, "", "DDS noise draws averaged per step"),
         ParamSpec("sigma", "float", 0.25, 0.01, 1.0, 0.01, "", "DDS noise std in pixel units"),
         _random_start()),
        "Adaptive attack on the FViT: Linf PGD whose loss is the mean over n_eot draws of "
        "delta ~ N(0, sigma^2) of the cross-entropy of classifier(one_shot_denoise(x + delta, t*)), "
        "back-propagated through denoiser and ViT (EOT, Athalye et al. 2018; Carlini et al. 2023 "
        "for DDS). Distance: Linf. Needs the denoiser. Defaults: eps 8/255, alpha 1.6/255, 10 "
        "steps, n_eot 4, sigma 0.25, random start.",
        _build_eot_dds, needs_denoiser=True, follows=("sigma",),
    ),
)

ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in _SPECS}


def get_attack(name: str) -> AttackSpec:
    """The AttackSpec registered as ``name``; ValueError listing the known names otherwise."""
    if name not in ATTACKS:
        raise SettingError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def attack_arguments(name: str, attack_params: Mapping[str, object] | None = None, *, eps: float | None = None,
                     steps: int | None = None, settings: Mapping[str, object] | None = None,
                     strict: bool = True) -> dict:
    """The parameters an analysis gives attack ``name`` (not yet resolved: :meth:`AttackSpec.resolve`
    adds defaults and the :attr:`AttackSpec.derived` ones such as alpha = eps / 5).

    ``attack_params`` as given; the ``eps`` / ``steps`` shortcuts (None: not given) override them;
    the :attr:`AttackSpec.follows` parameters not given take the analysis ``settings`` of the same
    name (the FViT's sigma for eot_dds; k, method and head fusion for topk). With ``strict`` a
    shortcut the attack lacks is a ValueError; without it, it is left out (fvit eval gives its
    budgets to every attack of the grid), as are ``attack_params`` the attack lacks.
    """
    spec = get_attack(name)
    names = {p.name for p in spec.params}
    params = dict(attack_params or {}) if strict else {k: v for k, v in (attack_params or {}).items() if k in names}
    for key, value in (("eps", eps), ("steps", steps)):
        if value is None:
            continue
        if key not in names:
            if strict:
                raise SettingError(f"attack {name!r} has no parameter {key!r}; its parameters: "
                                 f"{', '.join(sorted(names)) or 'none'}")
            continue
        params[key] = value
    for key in spec.follows:
        if key not in params and settings is not None and settings.get(key) is not None:
            params[key] = settings[key]
    return params


# --------------------------------------------------------------------------------------------
# Running an attack
# --------------------------------------------------------------------------------------------


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
                x_adv = spec.builder(AttackContext(model, resolved, denoiser, seed))(x_clean, labels).detach()
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
