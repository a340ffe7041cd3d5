"""Summary figures of ``fvit eval`` and ``fvit certify`` (matplotlib, the project's publication style).

- overlap vs attack budget: one panel per (attack, method), one line per (mode, sigma), 95%
  intervals as error bars, each smoothed line's Monte Carlo noise floor dashed;
- overlap vs sigma: one panel per (attack, method), one line per (mode, budget), the vanilla
  ViT at the same budget as a dotted level;
- certified accuracy vs L2 radius (Cohen), and the distribution of top-k attention radii.

Files are written atomically (temporary file + os.replace).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from fvit_core.report.style import COLORS, publication_style
from fvit_core.batch.grid import fmt_eps, fmt_sigma

MODE_COLORS: dict[str, str] = {"vanilla": COLORS["vanilla"], "dds": COLORS["fvit"], "rs": "#E69F00",
                               "denoise-only": "#CC79A7", "multistep": "#56B4E9"}
_MARKERS = ("o", "s", "^", "D", "v", "P")
_STYLES = ("-", "--", "-.", ":")
_PANEL_IN = 2.4


def _save(fig: Figure, path: Path) -> Path:
    from fvit_core.data.files import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=200, format=path.suffix.lstrip(".") or "png"))


def _panels(keys: Sequence[tuple[str, str]]):
    attacks = sorted({a for a, _ in keys})
    methods = sorted({m for _, m in keys})
    fig = Figure(figsize=(_PANEL_IN * len(methods) + 0.6, _PANEL_IN * len(attacks) + 0.3), layout="constrained")
    axes = fig.subplots(len(attacks), len(methods), squeeze=False)
    return fig, {(a, m): axes[i][j] for i, a in enumerate(attacks) for j, m in enumerate(methods)}


def _line(ax, xs, records: list[dict], label: str, color: str, marker: str, metric: str = "topk_overlap",
          style: str = "-") -> None:
    means = np.array([r[metric].mean for r in records], dtype=float)
    lows = np.array([r[metric].low for r in records], dtype=float)
    highs = np.array([r[metric].high for r in records], dtype=float)
    ax.errorbar(xs, means, yerr=[means - lows, highs - means], color=color, marker=marker, linestyle=style,
                capsize=2, label=label)


def overlap_vs_eps(records: Sequence[dict], path: Path, *, k: int) -> Path | None:
    """V_k against the attack budget (x in /255), per attack and method; None if no budgets."""
    rows = [r for r in records if r["eps"] is not None]
    if not rows:
        return None
    with publication_style():
        fig, axes = _panels([(r["attack"], r["method"]) for r in rows])
        for (attack, method), ax in axes.items():
            panel = [r for r in rows if r["attack"] == attack and r["method"] == method]
            lines = sorted({(r["mode"], r["sigma"]) for r in panel}, key=lambda ms: (ms[0] != "vanilla", ms[0], ms[1] or 0))
            for i, (mode, sigma) in enumerate(lines):
                line = sorted((r for r in panel if r["mode"] == mode and r["sigma"] == sigma), key=lambda r: r["eps"])
                xs = [r["eps"] * 255 for r in line]
                label = mode if sigma is None else f"{mode} sigma {fmt_sigma(sigma)}"
                color = MODE_COLORS.get(mode, "#000000")
                _line(ax, xs, line, label, color, _MARKERS[i % len(_MARKERS)])
                if mode != "vanilla" and any(r["topk_overlap_floor"].n for r in line):
                    ax.plot(xs, [r["topk_overlap_floor"].mean for r in line], color=color, linestyle=(0, (2, 2)),
                            linewidth=0.7, alpha=0.7, label=f"{label} noise floor")
            ax.set(title=f"{attack}, {method}", xlabel="attack budget eps (x/255)", ylabel=f"top-{k} overlap V_k",
                   ylim=(0, 1.02))
            ax.legend(loc="lower left")
        return _save(fig, path)


def overlap_vs_sigma(records: Sequence[dict], path: Path, *, k: int) -> Path | None:
    """V_k against sigma for the smoothed modes, per attack and method; None without them."""
    smoothed = [r for r in records if r["mode"] != "vanilla" and r["sigma"] is not None]
    if not smoothed:
        return None
    with publication_style():
        fig, axes = _panels([(r["attack"], r["method"]) for r in smoothed])
        for (attack, method), ax in axes.items():
            panel = [r for r in smoothed if r["attack"] == attack and r["method"] == method]
            lines = sorted({(r["mode"], r["eps"]) for r in panel}, key=lambda me: (me[0], me[1] or 0))
            for i, (mode, eps) in enumerate(lines):
                line = sorted((r for r in panel if r["mode"] == mode and r["eps"] == eps), key=lambda r: r["sigma"])
                _line(ax, [r["sigma"] for r in line], line, f"{mode} eps {fmt_eps(eps)}",
                      MODE_COLORS.get(mode, "#000000"), _MARKERS[i % len(_MARKERS)])
            for j, eps in enumerate(sorted({r["eps"] for r in panel}, key=lambda e: e or 0)):
                base = [r for r in records if r["mode"] == "vanilla" and r["attack"] == attack
                        and r["method"] == method and r["eps"] == eps and r["sigma"] is None]
                if base:
                    ax.axhline(base[0]["topk_overlap"].mean, color=MODE_COLORS["vanilla"], linewidth=0.8,
                               linestyle=_STYLES[1 + j % 3], label=f"vanilla eps {fmt_eps(eps)}")
            ax.set(title=f"{attack}, {method}", xlabel="sigma (pixel units)", ylabel=f"top-{k} overlap V_k",
                   ylim=(0, 1.02))
            ax.legend(loc="lower left")
        return _save(fig, path)


def certified_accuracy_curve(radii: np.ndarray, accuracy: np.ndarray, path: Path, *, title: str) -> Path:
    """Cohen's certified accuracy (fraction certified correct with radius >= r) against r."""
    with publication_style():
        fig = Figure(figsize=(3.4, 2.4), layout="constrained")
        ax = fig.subplots()
        ax.plot(radii, accuracy, color=COLORS["radius_class"])
        ax.set(title=title, xlabel="L2 radius r (pixel units)", ylabel="certified accuracy", ylim=(0, 1.02),
               xlim=(0, float(radii[-1])))
        return _save(fig, path)


def radius_histogram(values: np.ndarray, path: Path, *, title: str) -> Path:
    """Histogram of the certified top-k attention radii (L2)."""
    with publication_style():
        fig = Figure(figsize=(3.4, 2.4), layout="constrained")
        ax = fig.subplots()
        ax.hist(values, bins=min(30, max(5, len(values) // 5)), color=COLORS["radius_topk"])
        ax.set(title=title, xlabel="top-k attention radius (L2, pixel units)", ylabel="images")
        return _save(fig, path)
