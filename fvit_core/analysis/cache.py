"""What an analysis may reuse from earlier ones: an object its caller owns.

The dashboard keeps one :class:`AnalysisCache` per server (its sliders change one setting at a
time); ``fvit analyze``, ``fvit eval`` and the notebook API pass none, and :func:`analyze_many`
uses a private one for the length of the call (a sigma sweep crafts one attack). Entries are
kept per classifier (forgotten with it) and keyed by everything they depend on: the image, the
settings that reach them, the seed, the resolved precision and the weights' fingerprint
(analysis.pipeline derives the keys), so a hit is exactly what a fresh computation gives
(tests/test_pipeline.py).
"""

from __future__ import annotations

from typing import Any

from fvit_core.runtime.cache import ModelCache


class AnalysisCache:
    """The attack stages (attacked image + vanilla views), the attacked images alone (for an
    explanation-method change) and the FViT estimates of recent analyses.

    Args:
        attacks: attack stages and attacked images kept per classifier (a few MB for 64).
        estimates: FViT estimates kept per classifier (clean and attacked entries; with the
            bootstrap each keeps its N per-sample maps, so fewer).
    """

    def __init__(self, *, attacks: int = 64, estimates: int = 16):
        self.attack_stages: ModelCache[Any] = ModelCache(attacks)
        self.attacked_images: ModelCache[Any] = ModelCache(attacks)
        self.estimates: ModelCache[Any] = ModelCache(estimates)

    def clear(self, *, attacks: bool = True, estimates: bool = True) -> None:
        """Forget the attacks (stages and their attacked images) and the estimates, or one kind
        (benchmarks time cold analyses, a new sigma with the attack cached, or a new attack)."""
        if attacks:
            self.attack_stages.clear()
            self.attacked_images.clear()
        if estimates:
            self.estimates.clear()
