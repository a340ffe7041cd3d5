"""fvit: explanation faithfulness of Vision Transformers, the vanilla ViT against the Faithful ViT.

The notebook API (README, "Python"): the handful of names a researcher needs, imported on first
use so that ``import fvit_core`` (and the ``fvit`` command's help) stays free of torch.

    load_pair, load_image, prepare_image     models and images (pair.smoothing_size(mode): where DDS works)
    FaithfulViT, Runtime                     the method (sample / explain / predict / certify)
    AnalysisConfig, analyze, AnalysisCache   one attacked-vs-clean comparison, as the CLI and app run it
    ATTACKS, get_attack, run_attack          the attack registry
    EXPLANATION_METHODS, explain             explanations of the vanilla ViT
    topk_overlap, divergences, map_metrics   the metrics

Layout (docs/ARCHITECTURE.md, bottom to top): errors, protocol/ (bounds, seeds, the settings
machinery), metrics, data/, models/, explanations/, runtime/ (speed strategies), method/ (the
FViT: noise, denoising, Monte Carlo sums, certificates), attacks/, training/, analysis/,
report/, batch/ (eval, certify), cli/.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "load_pair": "fvit_core.models.pairs",
    "load_image": "fvit_core.data.images",
    "prepare_image": "fvit_core.data.images",
    "FaithfulViT": "fvit_core.method.faithful_vit",
    "Runtime": "fvit_core.runtime.strategy",
    "AnalysisConfig": "fvit_core.analysis.config",
    "AnalysisCache": "fvit_core.analysis.cache",
    "analyze": "fvit_core.analysis.pipeline",
    "ATTACKS": "fvit_core.attacks.specs",
    "get_attack": "fvit_core.attacks.specs",
    "run_attack": "fvit_core.attacks.runner",
    "EXPLANATION_METHODS": "fvit_core.explanations.settings",
    "explain": "fvit_core.explanations.attention",
    "topk_overlap": "fvit_core.metrics",
    "divergences": "fvit_core.metrics",
    "map_metrics": "fvit_core.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fvit_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
