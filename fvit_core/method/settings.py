"""The method's settings (torch-free): the smoothed model, its Monte Carlo estimate, early stopping.

docs/METHOD.md, section 3. :class:`SmoothingSettings` is what a :class:`~.faithful_vit.FaithfulViT`
is made of besides its networks (mode, sigma in pixel units, multistep's steps);
:class:`SamplingSettings` how its estimates of an analysis or eval run are drawn;
:class:`EarlyStopSettings` whether the sample loop may stop once the answer is settled.
"""

from __future__ import annotations

from dataclasses import dataclass

from fvit_core.errors import SettingError
from fvit_core.protocol.settings import Settings, bounded, one_of, setting

SMOOTHING_MODES: tuple[str, ...] = ("dds", "rs", "denoise-only", "multistep")
check_mode = one_of("smoothing mode", SMOOTHING_MODES)
# How the N noise draws of one estimate are made (docs/METHOD.md, section 3; docs/PERFORMANCE.md
# measures them): ``independent`` draws, or ``antithetic`` pairs (draw 2j + 1 is the negation of
# draw 2j), whose pair means are the independent units of the standard errors and resamples.
SAMPLING_SCHEMES: tuple[str, ...] = ("independent", "antithetic")
check_scheme = one_of("sampling scheme", SAMPLING_SCHEMES)


@dataclass(frozen=True, kw_only=True)
class SmoothingSettings(Settings):
    """The smoothed model: ``mode`` (SMOOTHING_MODES: dds, rs without a denoiser, denoise-only
    without noise, multistep denoising), the noise std ``sigma`` in [0, 1] pixel units (denoise-only
    uses it to choose t*) and the denoising steps of multistep."""

    mode: str = setting("dds", check=check_mode)
    sigma: float = setting(0.25, check=bounded("sigma"))
    multistep_steps: int = setting(10, check=bounded("multistep_steps"))

    @property
    def noisy(self) -> bool:
        """Whether the mode adds noise (every mode but denoise-only)."""
        return self.mode != "denoise-only"

    def draws(self, n_samples: int) -> int:
        """N for ``n_samples`` asked: 1 for the deterministic denoise-only mode."""
        return n_samples if self.noisy else 1


@dataclass(frozen=True, kw_only=True)
class SamplingSettings(Settings):
    """How the FViT's estimates are drawn: ``n_samples`` draws per estimate, by which ``scheme``
    (:data:`SAMPLING_SCHEMES`; flat name ``sampling``), and whether the attacked image reuses the
    clean image's draws (``shared_noise``: common random numbers, a labelled option that flatters
    V_k at small N; docs/METHOD.md)."""

    # 32 antithetic draws give the noise floor of 64 independent ones (docs/PERFORMANCE.md, "Fewer
    # draws": 0.920 both, paired difference 0.000 [-0.012, 0.012] over 100 held-out images).
    n_samples: int = setting(32, check=bounded("n_samples"))
    scheme: str = setting("antithetic", json="sampling", check=check_scheme)
    shared_noise: bool = setting(False)

    def check(self) -> None:
        check_draws(self.n_samples, self.scheme)


def check_draws(n_samples: int, scheme: str, name: str = "n_samples") -> None:
    """Antithetic draws come in pairs: an even number of them, at least 2 (``name``: the setting
    that holds the count, for the message)."""
    if scheme == "antithetic" and (n_samples < 2 or n_samples % 2):
        raise SettingError(f"antithetic sampling draws pairs: {name} must be even and at least 2, "
                           f"got {n_samples} (use {max(2, n_samples + 1)}, or --sampling independent)")


@dataclass(frozen=True, kw_only=True)
class EarlyStopSettings(Settings):
    """Stop sampling once the label and the top-k set are settled at level ``alpha``
    (monte_carlo.EarlyStop, whose rule also reads k)."""

    enabled: bool = setting(False, json="early_stop")
    alpha: float = setting(0.05, json="early_stop_alpha", check=bounded("early_stop_alpha"))
