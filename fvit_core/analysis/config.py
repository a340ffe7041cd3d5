"""The configs of the fronts, composed of the concepts' settings objects.

:class:`RunConfig` holds what every run has (the models, the explanation, the smoothed model,
the runtime, the seed and how images are fitted); :class:`ComparisonConfig` adds what every
clean-vs-attacked comparison has (the attack, the estimates, their noise floor, the sensitivity
check, the divergence order); :class:`AnalysisConfig` is one analysis (``fvit analyze``, the
dashboard, the notebook API). ``fvit eval`` and ``fvit certify`` compose the same pieces
(batch.config). Each setting is declared once, in its concept's object, with its default and
its check; a config adds only the rules between them.

Settings files and the result's JSON use the flat form (one name per setting: ``sigma``, ``k``,
``attack_params``): :meth:`~fvit_core.protocol.settings.Settings.to_dict`, ``from_dict``, ``of``
and ``replace``, e.g. ``AnalysisConfig.of(sigma=0.5, n_samples=32)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fvit_core.analysis.noise_floor import NoiseFloorSettings
from fvit_core.attacks.settings import AttackSettings, ResolvedAttack
from fvit_core.data.images import DEFAULT_PREPARE_MODE, PREPARE_MODES
from fvit_core.errors import InputError, SettingError
from fvit_core.explanations.settings import ExplanationSettings, SensitivitySettings
from fvit_core.method.settings import EarlyStopSettings, SamplingSettings, SmoothingSettings
from fvit_core.models.settings import ModelSettings
from fvit_core.protocol import limits
from fvit_core.protocol.settings import Settings, bounded, one_of, setting
from fvit_core.runtime.strategy import Runtime

C = TypeVar("C", bound=Settings)


def followed(sigma: float | None, explanation: ExplanationSettings) -> dict[str, Any]:
    """The analysis settings that attack parameters may follow (attacks.specs.AttackSpec.follows):
    the attacked FViT's sigma (None: no FViT), and the k, method and head fusion of the
    explanation."""
    return {"sigma": sigma, "k": explanation.k, "method": explanation.method, "head_fusion": explanation.head_fusion}


@dataclass(frozen=True, kw_only=True)
class RunConfig(Settings):
    """What every run has: ``models``, the ``explanation`` and its top-k set, the ``smoothing`` of
    the FViT, the ``runtime`` (speed only), the ``seed`` of every draw (protocol.seeds) and how an
    image is fitted to the model's input (``image_mode``: data.images.PREPARE_MODES)."""

    models: ModelSettings = setting(factory=ModelSettings)
    explanation: ExplanationSettings = setting(factory=ExplanationSettings)
    smoothing: SmoothingSettings = setting(factory=SmoothingSettings)
    runtime: Runtime = setting(factory=Runtime)
    seed: int = setting(0, check=bounded("seed"))
    image_mode: str = setting(DEFAULT_PREPARE_MODE, check=one_of("image mode", PREPARE_MODES))

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        """The config of a settings file (a JSON object of flat settings, or a result JSON whose
        ``config`` holds them), at most limits.MAX_SETTINGS_BYTES."""
        text = limits.read_settings_text(path, "settings file")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, and an integer over 4,300 digits
            reason = ("a number in it has more than 4,300 digits" if "integer string conversion" in str(exc)
                      else limits.short_repr(str(exc), 200))
            raise InputError(f"cannot read settings file {path}: {reason}") from exc
        if not isinstance(data, dict):
            raise InputError(f"settings file {path} must hold a JSON object")
        return cls.from_dict(data.get("config", data))


@dataclass(frozen=True, kw_only=True)
class ComparisonConfig(RunConfig):
    """A clean-vs-attacked comparison: the ``attack`` (crafted on the vanilla ViT unless it is the
    adaptive eot_dds), the FViT estimates' ``sampling``, their noise ``floor``, the
    neighbourhood ``sensitivity`` check and the order ``renyi_alpha`` of the Renyi divergence
    between the clean and the attacked prediction."""

    attack: AttackSettings = setting(factory=AttackSettings)
    sampling: SamplingSettings = setting(factory=SamplingSettings)
    floor: NoiseFloorSettings = setting(factory=NoiseFloorSettings)
    sensitivity: SensitivitySettings = setting(factory=SensitivitySettings)
    renyi_alpha: float = setting(2.0, check=bounded("renyi_alpha"))

    def check(self) -> None:
        n, floor = self.sampling.n_samples, self.floor
        if floor.enabled:  # two estimates to compare need two independent units each: draws, or antithetic pairs
            limits.check("n_samples", n, low=4 if self.sampling.scheme == "antithetic" else 2)
        if floor.bootstrap * n > limits.MAX_BOOTSTRAP_DRAWS:
            raise SettingError(f"bootstrap x n_samples = {floor.bootstrap:,} x {n:,} is over the limit of "
                               f"{limits.MAX_BOOTSTRAP_DRAWS:,} (about 40 bytes each); use at most "
                               f"{limits.MAX_BOOTSTRAP_DRAWS // n:,} bootstrap resamples")

    def follow(self) -> dict[str, Any]:
        """The settings this comparison's attack parameters may follow (:func:`followed`)."""
        return followed(self.smoothing.sigma, self.explanation)


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig(ComparisonConfig):
    """Every setting of one analysis; a JSON file of its flat form reproduces it (``--config``).

    Units: sigma, eps and radii in [0, 1] pixel units (eps 8/255 for Linf, 0.5 for L2). Defaults:
    PGD 8/255 with 10 steps; DDS at sigma 0.25 with 32 antithetic samples; raw attention, top-8; the
    bootstrap noise floor; "auto" precision (docs/PERFORMANCE.md measures each cost setting).

    Besides the comparison's settings: ``early_stop`` (end sampling once label and top-k set are
    settled) and ``confidence_alpha``, the failure probability of the certificates.
    """

    early_stop: EarlyStopSettings = setting(factory=EarlyStopSettings)
    confidence_alpha: float = setting(0.001, check=bounded("confidence_alpha"))

    def check(self) -> None:
        super().check()
        self.resolved_attack()  # the attack's parameters against its spec

    def resolved_attack(self) -> ResolvedAttack:
        """The attack with every parameter resolved (eps / steps shortcuts, followed analysis
        settings, alpha = eps / 5): computed once per analysis by the pipeline."""
        return self.attack.resolve(self.follow())

    def check_model(self, num_patches: int, num_classes: int | None = None) -> None:
        """What depends on the model: k at most its patches, the target class one of its classes."""
        self.explanation.check_model(num_patches, num_classes)
