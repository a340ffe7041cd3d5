"""Sigma sweep: the same image and attack analysed at several noise levels sigma.

The dashboard's sigma view calls :func:`run_sweep` with its cached analysis. Each point is one
:func:`pipeline.analyze` with
only ``sigma`` changed, so every point is exactly what the dashboard shows at that sigma. The
transfer attacks are crafted on the vanilla ViT with the same seed, so every point sees the same
attacked image; the adaptive ``eot_dds`` attack depends on sigma, and is pinned to the sigma it
was configured with (``attack_params["sigma"]``) so that the sweep, too, compares one attacked
image across noise levels.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.result import AnalysisResult
from fvit_core.errors import SettingError

DEFAULT_SIGMAS: tuple[float, ...] = (0.06, 0.12, 0.25, 0.5, 1.0)
Progress = Callable[[str, float], None]  # progress(stage, fraction of the whole sweep)


def sweep_configs(config: AnalysisConfig, sigmas: Sequence[float]) -> list[AnalysisConfig]:
    """One config per sigma (sorted, duplicates dropped), everything else as in ``config``."""
    values = sorted({float(s) for s in sigmas})
    if not values or any(not (math.isfinite(s) and s > 0) for s in values):
        raise SettingError(f"sigmas must be positive numbers in pixel units (e.g. 0.12, 0.25, 0.5), got {list(sigmas)!r}")
    base = config.to_dict()
    params = dict(base["attack_params"])
    if base["attack"] == "eot_dds" and "sigma" not in params:
        params["sigma"] = float(config.smoothing.sigma)  # one attacked image for the whole sweep
    return [type(config).from_dict({**base, "sigma": s, "attack_params": dict(params)}) for s in values]


def sweep_row(result: AnalysisResult) -> dict[str, Any]:
    """The plain numbers of one sweep point (floats, ints, bools, strings; None where n/a)."""
    d, c = result.faithful, result.faithful.certified
    ci = d.topk_overlap_ci or (None, None)
    return {
        "sigma": float(d.sigma),
        "k": int(result.config.explanation.k),
        "method": result.config.explanation.method,
        "head_fusion": result.config.explanation.head_fusion,
        "vanilla_overlap": float(result.vanilla.topk_overlap),
        "fvit_overlap": float(result.fvit.topk_overlap),
        "fvit_overlap_ci_low": ci[0],
        "fvit_overlap_ci_high": ci[1],
        "noise_floor": d.topk_overlap_floor,
        "fvit_clean_label": result.fvit.clean.label_name,
        "fvit_attacked_label": result.fvit.attacked.label_name,
        "fvit_clean_confidence": float(result.fvit.clean.confidence),
        "fvit_attacked_confidence": float(result.fvit.attacked.confidence),
        "fvit_label_kept": not result.fvit.label_flip,
        "vanilla_label_kept": not result.vanilla.label_flip,
        "class_radius": float(c.class_radius),
        "abstain": c.predicted_class < 0,
        "topk_radius_l2": float(c.topk_radius_l2),
        "topk_radius_linf": float(c.topk_radius_linf),
        "perturbation_l2": float(result.attack["l2"]),
        "t_star": d.t_star,
        "n_samples": int(d.n_samples),
    }


def run_sweep(
    configs: Sequence[AnalysisConfig],
    run: Callable[[AnalysisConfig, Progress], AnalysisResult],
    *,
    progress: Progress | None = None,
) -> list[AnalysisResult]:
    """The one sweep loop: ``run(config, report)`` for every config, in order.

    ``run`` is :func:`pipeline.analyze` on one image and pair, or the
    dashboard's cached analysis of the same call. ``progress(stage, fraction)`` sees one bar over
    the whole sweep, each stage named "σ = SIGMA (I/N) STAGE".
    """
    results = []
    for i, cfg in enumerate(configs):
        def report(stage: str, fraction: float, i: int = i, sigma: float = cfg.smoothing.sigma) -> None:
            if progress is not None:
                progress(f"σ = {sigma:g} ({i + 1}/{len(configs)}) {stage}", (i + fraction) / len(configs))

        results.append(run(cfg, report))
    return results
