"""The method's settings (torch-free): the smoothed model, its Monte Carlo estimate, early stopping.

docs/METHOD.md, section 3. :class:`SmoothingSettings` is what a :class:`~.faithful_vit.FaithfulViT`
is made of besides its networks (mode, sigma in pixel units, multistep's steps);
:class:`SamplingSettings` how its estimates of an analysis or eval run are drawn;
:class:`EarlyStopSettings` whether the sample loop may stop once the answer is settled.
"""

from __future__ import annotations

from dataclasses import dataclass

from fvit_core.protocol.settings import Settings, bounded, one_of, setting

SMOOTHING_MODES: tuple[str, ...] = ("dds", "rs", "denoise-only", "multistep")
check_mode = one_of("smoothing mode", SMOOTHING_MODES)


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
    """How the FViT's estimates are drawn: ``n_samples`` draws per estimate, and whether the
    attacked image reuses the clean image's draws (``shared_noise``: common random numbers, a
    labelled option that flatters V_k at small N; docs/METHOD.md)."""

    n_samples: int = setting(64, check=bounded("n_samples"))
    shared_noise: bool = setting(False)


@dataclass(frozen=True, kw_only=True)
class EarlyStopSettings(Settings):
    """Stop sampling once the label and the top-k set are settled at level ``alpha``
    (monte_carlo.EarlyStop, whose rule also reads k)."""

    enabled: bool = setting(False, json="early_stop")
    alpha: float = setting(0.05, json="early_stop_alpha", check=bounded("early_stop_alpha"))
