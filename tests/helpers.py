"""Shorthands the tests share (not part of the engine's API)."""

from __future__ import annotations

from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.method.monte_carlo import SmoothedOutput
from fvit_core.runtime.strategy import Runtime


def smooth(pair, images, *, sigma: float, n_samples: int, mode: str = "dds", batch_size: int = 256,
           multistep_steps: int = 10, precision: str = "float32", scheme: str = "independent",
           **sample_kwargs) -> list[SmoothedOutput]:
    """``FaithfulViT.from_pair(pair, sigma, ...).sample(images, n_samples, ...)``, float32 and
    independent draws (the plain Monte Carlo formulas these tests check) unless asked."""
    fvit = FaithfulViT.from_pair(pair, sigma, mode=mode, multistep_steps=multistep_steps,
                                 runtime=Runtime(precision=precision, batch_size=batch_size))
    return fvit.sample(images, n_samples, scheme=scheme, **sample_kwargs)
