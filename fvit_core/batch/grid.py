"""fvit eval's grid: the settings it evaluates, and the schema of its rows (keys and order).

A run evaluates attacks x eps x modes x sigmas x methods on every image; one JSON row per
(image, setting) is keyed by :func:`row_key` (what a resumed run skips) and ordered by
:func:`row_order`. ``vanilla`` is evaluated once per attack and budget, without sigma, except
under ``eot_dds``, whose attack depends on sigma.
"""

from __future__ import annotations

from dataclasses import dataclass

from fvit_core.attacks.specs import ATTACKS, get_attack
from fvit_core.explanations.settings import EXPLANATION_METHODS
from fvit_core.method.settings import SMOOTHING_MODES
from fvit_core.protocol.settings import Settings, bounded_list, setting, some_of

MODES: tuple[str, ...] = ("vanilla", *SMOOTHING_MODES)
# What a row of the summary is grouped by.
EVAL_GROUP: tuple[str, ...] = ("attack", "eps", "mode", "sigma", "method")


@dataclass(frozen=True, kw_only=True)
class EvalGrid(Settings):
    """The grid's axes: attacks, budgets (pixel units; attacks without a budget ignore them),
    modes (:data:`MODES`: the vanilla ViT and the smoothing modes), sigmas (pixel units) and
    explanation methods."""

    attacks: tuple[str, ...] = setting(("pgd",), check=some_of("attack", tuple(ATTACKS), "attacks"))
    eps: tuple[float, ...] = setting((8 / 255,), check=bounded_list("eps"))
    modes: tuple[str, ...] = setting(("vanilla", "dds"), check=some_of("mode", MODES, "modes"))
    sigmas: tuple[float, ...] = setting((0.25,), check=bounded_list("sigmas", "sigma", allow_empty=True))
    methods: tuple[str, ...] = setting(("raw",), check=some_of("explanation method", EXPLANATION_METHODS, "methods"))


@dataclass(frozen=True)
class Setting:
    """One evaluated combination; ``eps`` is None for attacks without a budget, ``sigma`` None
    for the vanilla ViT (except under eot_dds, where it is the attacked FViT's sigma)."""

    attack: str
    eps: float | None
    mode: str
    sigma: float | None
    method: str

    @property
    def smoothed(self) -> bool:
        return self.mode != "vanilla"


def settings_grid(grid: EvalGrid) -> list[Setting]:
    """The settings of a run, in evaluation order."""
    points = []
    for attack in grid.attacks:
        has_eps = any(p.name == "eps" for p in get_attack(attack).params)
        for eps in (grid.eps if has_eps else (None,)):
            for mode in grid.modes:
                sigmas = (None,) if mode == "vanilla" and attack != "eot_dds" else grid.sigmas
                for sigma in sigmas:
                    points += [Setting(attack, eps, mode, sigma, method) for method in grid.methods]
    return points


def row_key(image: str, setting: Setting) -> tuple:
    return (image, setting.attack, setting.eps, setting.mode, setting.sigma, setting.method)


def key_of_row(row: dict) -> tuple:
    return (row["image"], row["attack"], row["eps"], row["mode"], row["sigma"], row["method"])


def _num(value: float | None) -> float:
    return -1.0 if value is None else float(value)


def row_order(row: dict) -> tuple:
    return (row["index"], row["attack"], _num(row["eps"]), MODES.index(row["mode"]), _num(row["sigma"]), row["method"])


def group_order(key: tuple) -> tuple:
    """The order of the summary's groups (:data:`EVAL_GROUP` values)."""
    attack, eps, mode, sigma, method = key
    return (attack, _num(eps), MODES.index(mode) if mode in MODES else 99, _num(sigma), method)


def fmt_eps(eps: float | None) -> str:
    """8/255 for budgets on the /255 grid, else the number."""
    if eps is None:
        return "-"
    scaled = eps * 255
    return f"{round(scaled):g}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{eps:.4g}"


def fmt_sigma(sigma: float | None) -> str:
    return "-" if sigma is None else f"{sigma:g}"
