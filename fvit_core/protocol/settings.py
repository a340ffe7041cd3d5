"""The settings shared by ``fvit analyze``, ``fvit eval`` and ``fvit certify``, validated in one place.

AnalysisConfig, EvalConfig and CertifyConfig keep their own flat fields (settings files and flags
stay as they are); each composes the small typed pieces below from its fields and calls their
``validate``, so a shared setting (attack, explanation, smoothing, runtime) is checked by the same
rule, with the same message, in every front. Numbers are checked against :data:`limits.BOUNDS`.
:func:`check_types` checks every field of a settings dataclass against its annotation, so a
settings file with ``"eps": "8/255"`` is refused in one line instead of failing deep inside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Sequence

from fvit_core.errors import SettingError
from fvit_core.protocol import limits

if TYPE_CHECKING:
    from fvit_core.runtime.strategy import Runtime

# How the Monte Carlo noise floor is estimated (docs/PERFORMANCE.md compares them):
# - independent: V_k between the clean estimate and a second, independent clean estimate with
#   the same settings (a second batch of N samples; its votes also give Cohen's CERTIFY the
#   independent selection counts);
# - bootstrap: the mean V_k between the means of two bootstrap resamples (size N each) of the
#   clean estimate's own samples: no extra model passes, an estimate of the expected floor.
NOISE_FLOOR_ESTIMATORS: tuple[str, ...] = ("independent", "bootstrap")


def check_choice(what: str, value: Any, allowed: Iterable[str]) -> None:
    """SettingError naming the allowed values unless ``value`` is one of them."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise SettingError(f"unknown {what} {limits.short_repr(value)}; choose one of {', '.join(allowed)}")


def check_choices(what: str, values: Sequence[Any], allowed: Iterable[str], *, name: str | None = None) -> None:
    """A list setting of names (fvit eval's grid): at least one, at most limits.MAX_LIST, each allowed."""
    limits.check_list(name or what, values, bound_free=True)
    for value in values:
        check_choice(what, value, allowed)


@dataclass(frozen=True)
class AttackSettings:
    """Which attack, with the budget / steps shortcuts and the other parameters."""

    attack: str
    eps: float | None = None
    steps: int | None = None
    attack_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        from fvit_core.attacks.registry import ATTACKS

        check_choice("attack", self.attack, ATTACKS)
        limits.check_optional("eps", self.eps)
        limits.check_optional("steps", self.steps)
        if not isinstance(self.attack_params, Mapping) or not all(isinstance(k, str) for k in self.attack_params):
            raise SettingError("attack_params must map parameter names to values, got "
                             f"{limits.short_repr(self.attack_params)}")


@dataclass(frozen=True)
class ExplanationSettings:
    """The explanation (method, head fusion) and its top-k set (k, beta)."""

    method: str = "raw"
    head_fusion: str = "mean"
    k: int = 8
    beta: float = 0.5

    def validate(self, num_patches: int | None = None) -> None:
        from fvit_core.explanations.attention import EXPLANATION_METHODS, HEAD_FUSIONS

        check_choice("method", self.method, EXPLANATION_METHODS)
        check_choice("head fusion", self.head_fusion, HEAD_FUSIONS)
        limits.check("k", self.k)
        limits.check("beta", self.beta)
        if num_patches is not None and self.k > num_patches:
            raise SettingError(f"k={self.k} exceeds the model's {num_patches} patches; choose k in 1..{num_patches}")


@dataclass(frozen=True)
class SmoothingSettings:
    """The FViT's Monte Carlo estimate and its noise floor. ``modes``: the modes allowed here
    (certify needs noise)."""

    mode: str = "dds"
    sigma: float = 0.25
    n_samples: int | None = 64  # None: checked by the caller (certify's n0 and n have their own bounds)
    multistep_steps: int = 10
    precision: str = "auto"
    noise_floor: bool = True
    noise_floor_estimator: str = "bootstrap"
    bootstrap: int = 200

    def validate(self, modes: Sequence[str] | None = None) -> None:
        from fvit_core.method.faithful_vit import SMOOTHING_MODES

        check_choice("mode", self.mode, modes or SMOOTHING_MODES)
        limits.check("sigma", self.sigma)
        limits.check_optional("n_samples", self.n_samples, low=2 if self.noise_floor else 1)
        limits.check("multistep_steps", self.multistep_steps)
        check_precision(self.precision)
        if self.noise_floor_estimator not in NOISE_FLOOR_ESTIMATORS:
            raise SettingError(f"noise_floor_estimator must be one of {', '.join(NOISE_FLOOR_ESTIMATORS)}, "
                             f"got {limits.short_repr(self.noise_floor_estimator)}")
        limits.check("bootstrap", self.bootstrap)
        if self.n_samples is not None and self.bootstrap * self.n_samples > limits.MAX_BOOTSTRAP_DRAWS:
            raise SettingError(f"bootstrap x n_samples = {self.bootstrap:,} x {self.n_samples:,} is over the limit of "
                             f"{limits.MAX_BOOTSTRAP_DRAWS:,} (about 40 bytes each); use at most "
                             f"{limits.MAX_BOOTSTRAP_DRAWS // self.n_samples:,} bootstrap resamples")
        if self.noise_floor and self.noise_floor_estimator == "bootstrap" and self.bootstrap < 1:
            raise SettingError("the bootstrap noise floor needs bootstrap >= 1 resamples (e.g. 200)")


def check_precision(precision: Any) -> None:
    from fvit_core.runtime.precision import PRECISION_CHOICES

    if precision not in PRECISION_CHOICES:
        raise SettingError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {limits.short_repr(precision)}")


@dataclass(frozen=True)
class SensitivitySettings:
    """Neighbourhood sensitivity: M perturbations in a ball (M = 0: off)."""

    samples: int = 0
    radius: float = 0.02
    norm: str = "Linf"

    def validate(self) -> None:
        from fvit_core.explanations.sensitivity import SENSITIVITY_NORMS, check_sensitivity_settings

        limits.check("sensitivity_samples", self.samples)
        limits.check("sensitivity_radius", self.radius)
        if self.samples:
            check_sensitivity_settings(self.samples, self.radius, self.norm)
        elif self.norm not in SENSITIVITY_NORMS:
            raise SettingError(f"sensitivity_norm must be one of {', '.join(SENSITIVITY_NORMS)}, "
                             f"got {limits.short_repr(self.norm)}")


@dataclass(frozen=True)
class RuntimeSettings:
    """How an analysis runs (not what it computes, except the seed): seed, batch size, image mode."""

    seed: int = 0
    batch_size: int = 256
    image_mode: str = "resize"

    def validate(self) -> None:
        from fvit_core.data.images import PREPARE_MODES

        limits.check("seed", self.seed)
        limits.check("batch_size", self.batch_size)
        if self.image_mode not in PREPARE_MODES:
            raise SettingError(f"image_mode must be one of {', '.join(PREPARE_MODES)}, got {limits.short_repr(self.image_mode)}")


# --------------------------------------------------------------------------------------------
# Field groups: the flat fields that several settings classes share (keyword-only dataclasses)
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ModelFields:
    """Which models (a named pair, or classifier / denoiser folders or hub ids) and where they run."""

    model: str = "default"
    classifier: str | None = None
    denoiser: str | None = None
    device: str = "cpu"


@dataclass(kw_only=True)
class TopkFields:
    """How attention maps are fused over heads and compared: top-k sets of size k, overlap beta."""

    head_fusion: str = "mean"
    k: int = 8
    beta: float = 0.5


@dataclass(kw_only=True)
class EstimateFields:
    """The FViT's Monte Carlo estimates of an analysis or eval run, their noise floor and the
    divergence order. ``noise_floor_estimator``: NOISE_FLOOR_ESTIMATORS ("bootstrap" from the
    clean samples, "independent" from a second clean estimate of n_samples draws)."""

    n_samples: int = 64
    renyi_alpha: float = 2.0
    shared_noise: bool = False
    noise_floor: bool = True
    noise_floor_estimator: str = "bootstrap"
    bootstrap: int = 200

    @property
    def second_estimate(self) -> bool:
        """Whether the noise floor needs a second clean estimate (the "independent" estimator)."""
        return self.noise_floor and self.noise_floor_estimator == "independent"


@dataclass(kw_only=True)
class SensitivityFields:
    """Neighbourhood sensitivity (explanations/sensitivity.py): M perturbations in the
    sensitivity_norm ball of sensitivity_radius around the clean image; M = 0 switches it off.
    Costs M vanilla explanations and M smoothed estimates of n_samples draws (M <= 64)."""

    sensitivity_samples: int = 0
    sensitivity_radius: float = 0.02
    sensitivity_norm: str = "Linf"


@dataclass(kw_only=True)
class RunFields:
    """How a run prepares images and runs the networks (``precision``: "auto" is bfloat16 where the
    device computes it natively and the method is forward-only; runtime.precision), and its seed."""

    multistep_steps: int = 10
    image_mode: str = "resize"
    precision: str = "auto"
    batch_size: int = 256
    seed: int = 0

    def runtime(self) -> "Runtime":
        """The FViT's runtime strategy of these settings (runtime.strategy; imports torch)."""
        from fvit_core.runtime.strategy import Runtime

        return Runtime(precision=self.precision, batch_size=self.batch_size)


@dataclass(kw_only=True)
class FolderRunFields:
    """A batch run over an image folder (``fvit eval``, ``fvit certify``): where the images and the
    results are, which images, and how the run behaves (not what it computes)."""

    data: str
    out: str
    label_map: str | None = None
    limit: int | None = None
    subset_seed: int = 0
    allow_download: bool = False
    dist_backend: str = "gloo"
    progress: bool = True
    figures: bool = True
    strict: bool = False  # stop at the first unreadable image instead of skipping it

    # Fields that may change between a run and its resumption (rows are keyed by image and
    # setting): where things are, how fast, which images. Subclasses add their grid's fields.
    RESUMABLE_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "data", "out", "limit", "subset_seed", "batch_size", "device", "allow_download", "dist_backend", "progress",
        "figures", "strict"})


# --------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------

_FIELD_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float),
                                              "dict": (dict,)}
_FIELD_WORDS = {"str": "a string", "bool": "true or false", "int": "a whole number", "float": "a number",
                "dict": "a mapping of parameter names to values", "None": "null"}


def check_types(settings: Any) -> None:
    """Every field of the settings dataclass against its annotation (str, bool, int, float, dict,
    tuple[X, ...] of those, optionally None), so a field added later is checked too; ranges are
    the pieces' job. A bool is never taken for a number."""
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        kinds = [k.strip() for k in str(spec.type).split("|")]
        if value is None and "None" in kinds:
            continue
        element = next((k[len("tuple["):-len(", ...]")] for k in kinds
                        if k.startswith("tuple[") and k.endswith(", ...]")), None)
        if element is not None:
            if not isinstance(value, (list, tuple)):
                raise SettingError(f"{spec.name} must be a list of values, got {limits.short_repr(value)}")
            for item in value:
                _check_type(spec.name, item, [element])
            continue
        _check_type(spec.name, value, kinds)


def _check_type(name: str, value: Any, kinds: list[str]) -> None:
    allowed = tuple(t for kind in kinds for t in _FIELD_TYPES.get(kind, ()))
    if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
        wanted = " or ".join(_FIELD_WORDS[kind] for kind in kinds if kind in _FIELD_WORDS)
        raise SettingError(f"{name} must be {wanted}, got {limits.short_repr(value)}")
