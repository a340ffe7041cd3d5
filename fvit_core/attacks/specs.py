"""The attacks' specs (torch-free): names, distance measures, typed parameters a UI can render.

docs/METHOD.md, section 6. Every attack works in [0, 1] pixel space on a model whose first layer
normalises (PixelViT), so budgets are pixel units (eps = 8/255 for Linf, 0.5 for L2) and
torchattacks' ``set_normalization_used`` is never called.

``ATTACKS`` maps a name to an :class:`AttackSpec`: label, distance measure, typed
:class:`ParamSpec` parameters (bounds, step, display unit), a description, and the rules that
belong to the attack: the derived Linf step alpha = eps / 5 (the paper's PGD) and the parameters
that follow the analysis settings (the adaptive attack's sigma, the top-k attack's k and
explanation). The algorithms are in :mod:`.ours` and :mod:`.torchattacks_adapter`; the one entry
point that runs them is :func:`fvit_core.attacks.runner.run_attack`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import numpy as np

from fvit_core.errors import SettingError
from fvit_core.explanations.settings import EXPLANATION_METHODS, HEAD_FUSIONS
from fvit_core.protocol.limits import short_repr as _short

ParamKind = Literal["float", "int", "choice", "bool"]
ParamValue = float | int | str | bool
Norm = Literal["Linf", "L2", "none"]

_BOUND_RTOL = 1e-9  # lets 64/255 computed two ways pass a max of 64/255


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
class AttackSpec:
    """A registered attack.

    Attributes:
        name: registry key; label: human name; norm: the distance measure (``"none"`` for the
            identity and Gaussian noise).
        params: typed parameters; an ``eps`` parameter is the budget that the runner
            (attacks.runner.run_attack) enforces by projection (attacks without one, CW and
            DeepFool, are minimum-norm attacks and are only clamped to [0, 1]).
        description: paper, distance measure, defaults with units, input range.
        needs_denoiser: the attack differentiates through the DDS denoiser.
        derived: parameters computed from the others when not given (the Linf step size
            alpha = eps / 5, the paper's PGD rule): ``(name, rule(resolved params) -> value)``,
            applied by :meth:`resolve`, so every caller (run_attack, the fronts) gets them.
        follows: parameters that, when not given, take the value of the analysis setting of the
            same name (the adaptive attack's ``sigma``, the top-k attack's ``k``, ``method`` and
            ``head_fusion``): see attacks.settings.AttackSettings.arguments.
    """

    name: str
    label: str
    norm: Norm
    params: tuple[ParamSpec, ...]
    description: str
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
# The table
# --------------------------------------------------------------------------------------------

_RANGE = "Input: (B, 3, H, W) pixels in [0, 1]; output in [0, 1]."


# The paper's PGD step: alpha = eps / 5, for every Linf attack with a step size (unless given).
_STEP_RULE: tuple[tuple[str, Callable[[Mapping[str, ParamValue]], ParamValue]], ...] = (
    ("alpha", lambda p: float(p["eps"]) / 5.0),)


def _spec(name: str, label: str, norm: Norm, params: tuple[ParamSpec, ...], description: str, *,
          needs_denoiser: bool = False, follows: tuple[str, ...] = ()) -> AttackSpec:
    names = {p.name for p in params}
    derived = _STEP_RULE if norm == "Linf" and {"eps", "alpha"} <= names else ()
    return AttackSpec(name, label, norm, params, f"{description} {_RANGE}", needs_denoiser, derived, follows)


_SPECS: tuple[AttackSpec, ...] = (
    _spec("none", "No attack", "none", (), "Identity: the clean image."),
    _spec(
        "fgsm", "FGSM", "Linf", (_eps_linf(),),
        "Fast Gradient Sign Method, Goodfellow et al. 2015, 'Explaining and harnessing adversarial "
        "examples'. Distance: Linf. One step of size eps along the sign of the loss gradient. "
        "Defaults: eps 8/255.",
    ),
    _spec(
        "pgd", "PGD (Linf)", "Linf", (*_linf_steps(), _random_start()),
        "Projected Gradient Descent, Madry et al. 2018, 'Towards deep learning models resistant to "
        "adversarial attacks'. Distance: Linf. The paper's setting: eps 8/255, step alpha = eps/5 "
        "= 1.6/255, 10 steps, random start.",
    ),
    _spec(
        "pgdl2", "PGD (L2)", "L2",
        (_eps_l2(), ParamSpec("alpha", "float", 0.1, 0.0, 5.0, 0.01, "", "step size (L2 norm) per iteration"),
         _steps(), _random_start()),
        "Projected Gradient Descent in L2, Madry et al. 2018. Distance: L2 per image. Defaults: "
        "eps 0.5, alpha 0.1 (eps/5), 10 steps, random start.",
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
    ),
    _spec(
        "deepfool", "DeepFool", "L2",
        (_steps(50), ParamSpec("overshoot", "float", 0.02, 0.0, 1.0, 0.01, "", "step beyond the boundary")),
        "Moosavi-Dezfooli et al. 2016, 'DeepFool: a simple and accurate method to fool deep neural "
        "networks'. Distance: L2, minimum-norm (no budget). Defaults: 50 steps, overshoot 0.02.",
    ),
    _spec(
        "apgd", "APGD", "Linf",
        (_eps_linf(), _steps(),
         ParamSpec("n_restarts", "int", 1, 1, 20, 1, "", "random restarts"),
         ParamSpec("loss", "choice", "ce", choices=("ce", "dlr"), help="cross-entropy or difference of logits ratio")),
        "Auto-PGD, Croce & Hein 2020, 'Reliable evaluation of adversarial robustness with an "
        "ensemble of diverse parameter-free attacks'. Distance: Linf. Step size adapted "
        "automatically. Defaults: eps 8/255, 10 steps, 1 restart, loss ce.",
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
    ),
    _spec(
        "square", "Square", "Linf",
        (_eps_linf(), ParamSpec("n_queries", "int", 1000, 1, 10000, 1, "", "model queries per image")),
        "Square Attack, Andriushchenko et al. 2020, 'Square attack: a query-efficient black-box "
        "adversarial attack via random search'. Distance: Linf. Gradient-free (margin loss); stops "
        "per image once fooled. Defaults: eps 8/255, 1000 queries (torchattacks' default is 5000).",
    ),
    _spec(
        "mifgsm", "MI-FGSM", "Linf",
        (*_linf_steps(),
         ParamSpec("decay", "float", 1.0, 0.0, 2.0, 0.1, "", "momentum decay factor")),
        "Momentum Iterative FGSM, Dong et al. 2018, 'Boosting adversarial attacks with momentum'. "
        "Distance: Linf. Defaults: eps 8/255, alpha eps/5 (1.6/255), 10 steps, decay 1.0.",
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
    ),
    _spec(
        "gn", "Gaussian noise", "none",
        (ParamSpec("std", "float", 0.1, 0.0, 1.0, 0.01, "", "noise standard deviation in pixel units"),),
        "Additive Gaussian noise N(0, std^2) per pixel, clipped to [0, 1]: a non-adversarial "
        "baseline (torchattacks GN). No budget. Default: std 0.1.",
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
        follows=("k", "method", "head_fusion"),
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
        needs_denoiser=True, follows=("sigma",),
    ),
)

ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in _SPECS}


def get_attack(name: str) -> AttackSpec:
    """The AttackSpec registered as ``name``; ValueError listing the known names otherwise."""
    if name not in ATTACKS:
        raise SettingError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    return ATTACKS[name]
