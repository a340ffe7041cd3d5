"""Per-image randomness, the same in every front (``fvit analyze``, ``fvit eval``, ``fvit certify``,
the dashboard).

Every random draw of an analysis belongs to a *stage* of one image and comes from its own
generator, seeded by :func:`derive_seed` from (run seed, image identity, stage, setting parts):

- image identity: :func:`fvit_core.data.images.image_digest` of the decoded image, the (3, H, W)
  float32 array that ``load_image`` returns, before it is resized to any model (so the same file
  gets the same draws whatever its path, folder order, rank or resumption);
- stages (:data:`STAGES`): ``attack`` (the attack's seed), ``clean`` (the clean estimate; with
  the independent noise floor, the second estimate drawn in the same call: batch [x, x]),
  ``attacked``, ``noise`` (the draws shared by clean and attacked with ``shared_noise``),
  ``floor`` (the second clean estimate when the clean one used shared noise), ``bootstrap``
  (numpy, for the bootstrap floor and intervals), ``sensitivity-draws`` (the ball
  perturbations), ``sensitivity`` (their smoothing), ``pt`` (fvit eval's perturbation test),
  ``certify`` and ``certify-check``;
- setting parts: for smoothing stages :func:`smoothing_parts` (mode, sigma, method); for the
  attack stage :func:`attack_parts` (attack, resolved eps, sigma for eot_dds, method for topk);
  the attacked stage both.

So the same image, settings and seed give the same numbers in every front (tests/test_cross_front.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

STAGES: tuple[str, ...] = ("attack", "clean", "attacked", "noise", "floor", "bootstrap", "sensitivity-draws",
                           "sensitivity", "pt", "certify", "certify-check")


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (JSON-serialisable values).

    sha256 of the canonical JSON of [seed, *parts]: the same inputs give the same seed on every
    machine, rank and Python version (unlike ``hash()``), and nearby inputs give unrelated seeds.
    Floats are written by ``repr``, so 8/255 and 0.0313725... are the same part.
    """
    text = json.dumps([int(seed), *parts], separators=(",", ":"), sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & ((1 << 63) - 1)


def smoothing_parts(mode: str, sigma: float | None, method: str) -> tuple:
    """The setting parts of a smoothing stage."""
    return (mode, None if sigma is None else float(sigma), method)


def attack_parts(attack: str, params: Mapping[str, Any]) -> tuple:
    """The setting parts of the attack stage, from the attack's *resolved* parameters: the attack,
    its budget (None without one), the attacked FViT's sigma (eot_dds) and the attacked
    explanation method (topk)."""
    eps = params.get("eps")
    return (attack, None if eps is None else float(eps),
            float(params["sigma"]) if attack == "eot_dds" else None,
            params["method"] if attack == "topk" else None)


@dataclass(frozen=True)
class ImageSeeds:
    """The per-stage seeds of one image in one run: ``ImageSeeds(run seed, image digest)``."""

    seed: int
    image: str  # images.image_digest of the decoded image

    def __call__(self, stage: str, *parts: Any) -> int:
        """The seed of ``stage`` with its setting ``parts``."""
        if stage not in STAGES:
            raise ValueError(f"unknown seed stage {stage!r}; one of {', '.join(STAGES)}")
        return derive_seed(self.seed, "image", self.image, stage, *parts)

    def generator(self, stage: str, *parts: Any) -> "torch.Generator":
        """A CPU torch.Generator for ``stage`` (noise is drawn on the CPU)."""
        import torch  # here: the rest of the protocol is torch-free

        return torch.Generator().manual_seed(self(stage, *parts))

    def rng(self, stage: str, *parts: Any) -> np.random.Generator:
        """A numpy Generator for ``stage`` (the bootstrap)."""
        return np.random.default_rng(self(stage, *parts))
