"""The settings of ``fvit eval`` and ``fvit certify``: the analysis's pieces, plus a batch run's.

Both compose the concepts' settings objects as an analysis does (analysis.config); an eval
run's attack, explanation and smoothing objects are templates whose grid axes (attack, eps,
method, mode, sigma) the grid (batch.grid.EvalGrid) gives per point. Units: eps, sigma and radii
in [0, 1] pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from fvit_core.analysis.config import ComparisonConfig, RunConfig, followed
from fvit_core.attacks.settings import AttackSettings, ResolvedAttack
from fvit_core.attacks.specs import get_attack
from fvit_core.batch.grid import EvalGrid, Setting, settings_grid
from fvit_core.data.segmentation import is_gtsegs
from fvit_core.errors import SettingError
from fvit_core.explanations.perturbation_test import FILLS
from fvit_core.explanations.settings import ExplanationSettings
from fvit_core.method.settings import SmoothingSettings, check_draws
from fvit_core.protocol import limits
from fvit_core.protocol.settings import Settings, bounded, bounded_list, one_of, setting

# The smoothing modes a certificate can be given for (it needs noise).
CERTIFY_MODES: tuple[str, ...] = ("dds", "rs", "multistep")


@dataclass(frozen=True, kw_only=True)
class BatchRunSettings(Settings):
    """A batch run over an image folder: where the images (``data``: DIR/<class>/<images>, or for
    ``fvit eval`` a gtsegs-format .mat file) and
    the results (``out``) are, which images (a ``label_map``, a seeded subset of ``limit``), and
    how the run behaves (downloads, the torchrun backend, progress bar, figures, ``strict``: stop
    at the first unreadable image instead of skipping it), not what it computes."""

    data: str = setting()
    out: str = setting()
    label_map: str | None = setting(None)
    limit: int | None = setting(None, check=bounded("limit", optional=True))
    subset_seed: int = setting(0, check=bounded("subset_seed"))
    allow_download: bool = setting(False)
    dist_backend: str = setting("gloo", check=one_of("torch.distributed backend", ("gloo", "nccl")))
    progress: bool = setting(True)
    figures: bool = setting(True)
    strict: bool = setting(False)

    # Flat settings that may change between a run and its resumption (rows are keyed by image and
    # setting): where things are, how fast, which images. Configs add their grid's.
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({
        "data", "out", "limit", "subset_seed", "batch_size", "device", "allow_download", "dist_backend", "progress",
        "figures", "strict"})


@dataclass(frozen=True, kw_only=True)
class PerturbationTestSettings(Settings):
    """Chefer et al.'s perturbation test (explanations.perturbation_test): on or off, the
    smoothing draws per perturbed image, and what removed patches are filled with."""

    enabled: bool = setting(True, json="perturbation_test")
    samples: int = setting(16, json="pt_samples", check=bounded("pt_samples"))
    fill: str = setting("mean", json="pt_fill", check=one_of("perturbation-test fill", FILLS))


@dataclass(frozen=True, kw_only=True)
class SegmentationSettings(Settings):
    """The segmentation test (docs/METHOD.md, section 7): ``masks``, a folder of object masks
    mirroring the data folder (MASKS/<class>/<stem>.png); None without one. A gtsegs-format
    ``data`` file brings its own masks."""

    masks: str | None = setting(None)


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ComparisonConfig):
    """Every setting of one ``fvit eval`` run: the comparison's settings, the ``batch`` run, the
    ``grid`` and the ``perturbation`` test."""

    batch: BatchRunSettings = setting(factory=BatchRunSettings)
    grid: EvalGrid = setting(factory=EvalGrid)
    perturbation: PerturbationTestSettings = setting(factory=PerturbationTestSettings)
    segmentation: SegmentationSettings = setting(factory=SegmentationSettings)

    # The grid gives these per point (EvalGrid's axes), so the templates' values are not settings;
    # a batch explains each image's own predicted class, so no fixed target either.
    OMITTED: ClassVar[frozenset[str]] = frozenset({"attack.name", "attack.eps", "explanation.method", "smoothing.mode",
                                                   "smoothing.sigma", "explanation.target"})
    # Flat settings that may change between a run and its resumption: the run's and the grid.
    FREE_FIELDS: ClassVar[frozenset[str]] = BatchRunSettings.RESUMABLE | {"attacks", "eps", "sigmas", "modes",
                                                                          "methods"}
    # Settings added after some folders' rows were made, with the value those rows were made with
    # when it is not today's default: such a folder resumes only with that value.
    LEGACY_VALUES: ClassVar[dict] = {"noise_floor_estimator": "independent", "sampling": "independent"}

    def check(self) -> None:
        super().check()
        grid = self.grid
        if any(mode != "vanilla" for mode in grid.modes) and not grid.sigmas:
            raise SettingError("smoothed modes need at least one sigma")
        if self.segmentation.masks is not None and is_gtsegs(self.batch.data):
            raise SettingError("a gtsegs .mat file brings its own masks: drop --masks")
        if self.perturbation.enabled:  # the perturbation test smooths with the run's scheme too
            check_draws(self.perturbation.samples, self.sampling.scheme, "pt_samples")
        points = settings_grid(grid)
        if len(points) > limits.MAX_GRID:
            raise SettingError(f"the grid holds {len(points):,} settings (attacks x eps x modes x sigmas x methods), "
                               f"over the limit of {limits.MAX_GRID:,}; split it over several runs")
        known = {p.name for a in grid.attacks for p in get_attack(a).params}
        unknown = sorted(set(self.attack.params) - known)
        if unknown:
            raise SettingError(f"attack parameter(s) {', '.join(unknown)} belong to none of the attacks "
                               f"{', '.join(grid.attacks)}")
        for mode in {m for m in grid.modes if m != "vanilla"}:
            for sigma in grid.sigmas:
                self.smoothing_of(mode, sigma)
        for point in points:
            self.explanation_of(point)
            self.resolved_attack(point)

    def attack_of(self, point: Setting) -> AttackSettings:
        """The attack of a grid point: the template with the point's attack and budget."""
        return replace(self.attack, name=point.attack, eps=point.eps)

    def explanation_of(self, point: Setting) -> ExplanationSettings:
        return replace(self.explanation, method=point.method)

    def smoothing_of(self, mode: str, sigma: float) -> SmoothingSettings:
        return replace(self.smoothing, mode=mode, sigma=sigma)

    def resolved_attack(self, point: Setting) -> ResolvedAttack:
        """The point's attack, resolved as ``fvit analyze`` resolves its own (the parameters it
        has, eps and steps, the FViT's sigma for eot_dds, and k, the evaluated method and head
        fusion for topk; alpha = eps / 5)."""
        return self.attack_of(point).resolve(followed(point.sigma, self.explanation_of(point)), strict=False)


@dataclass(frozen=True, kw_only=True)
class CertificationSettings(Settings):
    """Cohen's CERTIFY with ``n0`` selection and ``n`` estimation draws at failure probability
    ``alpha``; the certified-accuracy table's L2 ``radii``; and the empirical check of the top-k
    certificate: ``check_random`` random points and (``check_attacks``) two attacks inside the
    radius, each smoothed with ``check_samples`` draws (default n)."""

    n0: int = setting(100, check=bounded("n0"))
    n: int = setting(1000, check=bounded("n"))
    alpha: float = setting(0.001, check=bounded("alpha"))
    radii: tuple[float, ...] = setting((0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0), check=bounded_list("radii"))
    check_random: int = setting(0, check=bounded("check_random"))
    check_attacks: bool = setting(False)
    check_samples: int | None = setting(None, check=bounded("check_samples", optional=True))


@dataclass(frozen=True, kw_only=True)
class CertifyConfig(RunConfig):
    """Every setting of one ``fvit certify`` run (sigma and radii in pixel units, L2). The
    certificate holds for the smoothed classifier built on the base networks as they run, so a
    bfloat16 base gives a valid certificate of that classifier."""

    batch: BatchRunSettings = setting(factory=BatchRunSettings)
    certificate: CertificationSettings = setting(factory=CertificationSettings)

    # The certified top-k set is the explanation of each image's smoothed top class.
    OMITTED: ClassVar[frozenset[str]] = frozenset({"explanation.target"})
    FREE_FIELDS: ClassVar[frozenset[str]] = BatchRunSettings.RESUMABLE | {"radii"}
    LEGACY_VALUES: ClassVar[dict] = {}

    def check(self) -> None:
        if self.smoothing.mode not in CERTIFY_MODES:
            raise SettingError(f"certify needs noise: mode must be one of {', '.join(CERTIFY_MODES)}, "
                               f"got {self.smoothing.mode!r}")
