"""The settings of one analysis (``fvit analyze``, the dashboard, the notebook API).

:class:`AnalysisConfig` keeps one flat field per setting, so a JSON settings file reproduces an
analysis (``--config``); its :meth:`~AnalysisConfig.validate` composes the shared pieces of
:mod:`fvit_core.protocol.settings` (the same rules as ``fvit eval`` and ``fvit certify``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from fvit_core.attacks.registry import attack_arguments as registry_attack_arguments
from fvit_core.attacks.registry import get_attack
from fvit_core.errors import InputError, SettingError
from fvit_core.protocol import limits
from fvit_core.protocol.settings import (AttackSettings, EstimateFields, ExplanationSettings, ModelFields, RunFields,
                                         RuntimeSettings, SensitivityFields, SensitivitySettings, SmoothingSettings,
                                         TopkFields, check_types)


# The numeric settings only an analysis has, each checked against limits.BOUNDS (the shared ones:
# protocol/settings).
ANALYSIS_NUMBERS: tuple[str, ...] = ("confidence_alpha", "renyi_alpha", "early_stop_alpha")


@dataclass(kw_only=True)
class AnalysisConfig(ModelFields, TopkFields, EstimateFields, SensitivityFields, RunFields):
    """Every setting of one analysis; a JSON file of these fields reproduces it (``--config``).

    Units: sigma, eps and radii in [0, 1] pixel units (eps 8/255 for Linf, 0.5 for L2).

    Cost settings (docs/PERFORMANCE.md measures each): ``precision`` "auto" (the default) runs the
    DDS networks in bfloat16 where the device computes it natively, else float32
    (runtime.precision.resolve_precision); ``early_stop`` ends sampling once label and top-k set are
    settled at level ``early_stop_alpha`` (monte_carlo.EarlyStop); ``noise_floor_estimator``
    "bootstrap" (the default) estimates the noise floor from the clean samples, "independent"
    from a third batch of N samples (whose votes then also serve as Cohen's selection counts;
    otherwise the vanilla ViT's clean prediction is the selection, which is just as valid).
    """

    # The shared fields (model, head_fusion/k/beta, n_samples and the noise floor, sensitivity,
    # run costs and seed) come from the protocol's field groups; these are an analysis' own.
    attack: str = "pgd"
    eps: float | None = None
    steps: int | None = None
    attack_params: dict = field(default_factory=dict)
    method: str = "raw"
    mode: str = "dds"
    sigma: float = 0.25
    confidence_alpha: float = 0.001
    early_stop: bool = False
    early_stop_alpha: float = 0.05

    def attack_arguments(self) -> dict:
        """The attack's parameters: ``attack_params`` with the ``eps`` / ``steps`` shortcuts applied
        and the parameters that follow the analysis settings (registry.attack_arguments; the
        registry's resolve adds the derived ones, alpha = eps / 5)."""
        return registry_attack_arguments(self.attack, self.attack_params, eps=self.eps, steps=self.steps,
                                         settings={"sigma": self.sigma, "k": self.k, "method": self.method,
                                                   "head_fusion": self.head_fusion})

    def validate(self, num_patches: int | None = None) -> None:
        """Raise ValueError with an actionable message for any invalid setting.

        Settings come from users (flags, settings files, the dashboard), so types are checked
        too: a settings file with ``"eps": "8/255"`` or ``"shared_noise": "false"`` is refused
        instead of failing deep inside (or, for the string, being silently true).
        """
        check_types(self)
        # The shared pieces (protocol/settings: the same rules in fvit eval and certify).
        AttackSettings(self.attack, self.eps, self.steps, self.attack_params).validate()
        ExplanationSettings(self.method, self.head_fusion, self.k, self.beta).validate(num_patches)
        SmoothingSettings(self.mode, self.sigma, self.n_samples, self.multistep_steps, self.precision, self.noise_floor,
                          self.noise_floor_estimator, self.bootstrap).validate()
        SensitivitySettings(self.sensitivity_samples, self.sensitivity_radius, self.sensitivity_norm).validate()
        RuntimeSettings(self.seed, self.batch_size, self.image_mode).validate()
        # The numbers only an analysis has, against their documented bounds (limits.BOUNDS).
        limits.check_settings(self, ANALYSIS_NUMBERS)
        get_attack(self.attack).resolve(self.attack_arguments())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AnalysisConfig":
        if not isinstance(data, dict):
            raise SettingError(f"settings must be a JSON object of name: value pairs, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            shown = ", ".join(limits.short_repr(name, 40).strip("'") for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise SettingError(f"unknown settings {shown}; known: {', '.join(sorted(names))}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "AnalysisConfig":
        text = limits.read_settings_text(path, "settings file")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"cannot read settings file {path}: {limits.short_repr(str(exc), 200)}") from exc
        if not isinstance(data, dict):
            raise InputError(f"settings file {path} must hold a JSON object")
        return cls.from_dict(data.get("config", data))
