"""The models' settings (torch-free): which classifier and denoiser, and where they run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fvit_core.protocol.settings import Settings, setting

if TYPE_CHECKING:
    from fvit_core.models.pairs import ModelPair


@dataclass(frozen=True, kw_only=True)
class ModelSettings(Settings):
    """A named pair (``pair``, models.pairs.MODEL_PAIRS; flat name ``model``), with either model
    replaced by a folder or a hub name (``classifier``, ``denoiser``), on ``device``."""

    pair: str = setting("default", json="model")
    classifier: str | None = setting(None)
    denoiser: str | None = setting(None)
    device: str = setting("cpu")

    def load(self, *, device: str | None = None, allow_download: bool = False) -> "ModelPair":
        """The pair these settings name (models.pairs.load_pair), on ``device`` (default: the
        settings' own; a torchrun rank passes its GPU)."""
        from fvit_core.models.pairs import load_pair  # torch: only when the models are loaded

        return load_pair(self.pair, classifier=self.classifier, denoiser=self.denoiser,
                         device=device or self.device, allow_download=allow_download)
