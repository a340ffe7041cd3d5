"""The FViT's guarantees at the clean image of an analysis (docs/METHOD.md, section 5), from the
analysis' own samples: Cohen's class radius, the top-k radius, the prediction-stability bound."""

from __future__ import annotations

import numpy as np

from fvit_core import metrics
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.result import Certificates
from fvit_core.method import certify
from fvit_core.method.monte_carlo import SmoothedOutput


# Cohen's CERTIFY needs a class guess made independently of the estimation samples:
# - "second-estimate": the votes of the independent noise-floor estimate (Cohen's n0 counts);
# - "vanilla-prediction": the vanilla ViT's prediction on the clean image, a fixed function of the
#   image and so independent of the noise. When it is not the smoothed classifier's top class the
#   certificate abstains (valid, only less often certified);
# - "shared": the estimation votes themselves (only when neither is given; flagged).
SELECTION_SOURCES: tuple[str, ...] = ("second-estimate", "vanilla-prediction", "shared")
# Why CERTIFY abstains: the guessed class is not the smoothed classifier's top class of the
# estimation votes, or it is but its share's lower bound p_A_lower is below 1/2.
ABSTAIN_REASONS: tuple[str, ...] = ("guess-not-top", "no-majority")


def certificates(cfg: AnalysisConfig, clean: SmoothedOutput, selection: np.ndarray | None, source: str,
                  attacked: SmoothedOutput, perturbation_l2: float, input_dim: int, num_patches: int) -> Certificates:
    independent = selection is not None
    # Cohen's binomial bounds count independent draws only: every draw, or the first of each
    # antithetic pair (SmoothedOutput.independent_votes).
    votes = clean.independent_votes
    if selection is None:
        selection, source = votes, "shared"
    sigma, alpha = cfg.smoothing.sigma, cfg.confidence_alpha
    k, beta = cfg.explanation.k, cfg.explanation.beta
    cls, radius = certify.certify_counts(selection, votes, sigma, alpha)
    # What CERTIFY tried: the guessed class c_A and the bound on its share of the votes.
    guess = int(np.argmax(selection))
    p_lower = certify.lower_confidence_bound(int(votes[guess]), int(votes.sum()), alpha)
    reason = None
    if cls == certify.ABSTAIN:
        reason = "no-majority" if guess == int(np.argmax(votes)) else "guess-not-top"
    k_radius = 0.0
    # The bound compares ranks up to k + k0 (METHOD.md 5.3): for larger k (or k = P) nothing is
    # certified, which radius 0 states; denoise-only adds no noise, so it certifies nothing either.
    k0 = certify.topk_boundary_size(k, beta)
    if k + k0 <= num_patches and cfg.smoothing.noisy:
        k_radius = certify.topk_certified_radius(clean.attention, k, beta, sigma)
    measured = metrics.divergences(clean.probs, attacked.probs, renyi_alpha=cfg.renyi_alpha)["renyi"]
    return Certificates(
        predicted_class=int(cls), class_radius=float(radius), topk_radius_l2=float(k_radius),
        topk_radius_linf=float(certify.linf_from_l2(k_radius, input_dim)), p_a_lower=float(p_lower),
        perturbation_l2=perturbation_l2,
        prediction_bound=float(certify.prediction_stability_bound(perturbation_l2, sigma, cfg.renyi_alpha)),
        measured_renyi=float(measured), independent_selection=independent, selection=source, guess_class=guess,
        abstain_reason=reason, vote_draws=int(votes.sum()),
        vote_scheme="first of each antithetic pair" if clean.scheme == "antithetic" else "every draw",
    )
