"""The explanation's settings and names (torch-free): which method, how heads are fused, the
top-k set it is compared by, and the neighbourhood sensitivity check.

docs/METHOD.md, section 4 (methods) and section 1 (top-k overlap V_k, beta); docs/METRICS.md
(sensitivity). The explanation methods themselves are in :mod:`.attention`, :mod:`.lrp` and
:mod:`.attribution_rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fvit_core.errors import SettingError
from fvit_core.protocol.settings import Settings, bounded, one_of, setting

EXPLANATION_METHODS: tuple[str, ...] = (
    "raw", "rollout", "grad_rollout", "gradcam", "transformer_attribution", "lrp", "partial_lrp", "attr_rollout"
)
# Chefer et al. (CVPR 2021)'s relevance propagation (explanations.lrp).
LRP_METHODS: tuple[str, ...] = ("transformer_attribution", "lrp", "partial_lrp")
# The methods that differentiate the target logit (the others are forward-only); attr_rollout
# (Xu et al. 2022, explanations.attribution_rollout) differentiates every block's exit logit.
GRADIENT_METHODS: tuple[str, ...] = ("grad_rollout", "gradcam", "transformer_attribution", "attr_rollout")
# The methods whose explanation depends on the class explained: those that differentiate the
# target logit and those that propagate its relevance. Attention itself (raw, rollout) does not.
CLASS_METHODS: tuple[str, ...] = (*GRADIENT_METHODS, "lrp", "partial_lrp")
# The methods whose patch relevances are signed before the clamp (full LRP sums the signed pixel
# relevances of each patch; attr_rollout rolls out signed attention x gradient without a relu);
# their maps are shown on a diverging scale.
SIGNED_METHODS: tuple[str, ...] = ("lrp", "attr_rollout")
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")

check_method = one_of("explanation method", EXPLANATION_METHODS)
check_head_fusion = one_of("head fusion", HEAD_FUSIONS)


def needs_gradients(method: str) -> bool:
    """Whether ``method`` differentiates the logits (grad_rollout, gradcam, transformer_attribution,
    attr_rollout) or is forward-only (the other LRP methods propagate relevance with explicit rules)."""
    check_method(method)
    return method in GRADIENT_METHODS


def float32_only(method: str) -> bool:
    """Whether ``method`` must run in float32 under the "auto" precision: gradients in bfloat16
    were not measured, and the LRP rules divide by activations (runtime.precision)."""
    return needs_gradients(method) or method in LRP_METHODS


@dataclass(frozen=True, kw_only=True)
class ExplanationSettings(Settings):
    """The explanation w(x) and its top-k set: ``method`` (EXPLANATION_METHODS), ``head_fusion``
    over heads, the ``target`` class whose logit the class-dependent methods explain (an index;
    None: each image's, and each noisy draw's, own predicted class, as pytorch-grad-cam and Captum
    default to), the focal-patch count ``k`` and the overlap ``beta`` the top-k certificate asks
    for (V_k >= beta)."""

    method: str = setting("raw", check=check_method)
    head_fusion: str = setting("mean", check=check_head_fusion)
    target: int | None = setting(None, check=bounded("target", optional=True))
    k: int = setting(8, check=bounded("k"))
    beta: float = setting(0.5, check=bounded("beta"))

    @property
    def depends_on_target(self) -> bool:
        """Whether the method's map changes with the class explained (:data:`CLASS_METHODS`)."""
        return self.method in CLASS_METHODS

    def check_model(self, num_patches: int, num_classes: int | None = None) -> None:
        """k must not exceed the model's patches, the target its classes."""
        if self.k > num_patches:
            raise SettingError(f"k={self.k} exceeds the model's {num_patches} patches; choose k in 1..{num_patches}")
        if self.target is not None and num_classes is not None and self.target >= num_classes:
            raise SettingError(f"target class {self.target} does not exist: the model has {num_classes} classes "
                               f"(0..{num_classes - 1}); leave it unset to explain the predicted class")


SENSITIVITY_NORMS: tuple[str, ...] = ("Linf", "L2")


@dataclass(frozen=True, kw_only=True)
class SensitivitySettings(Settings):
    """Neighbourhood sensitivity (explanations.sensitivity): ``samples`` perturbations M drawn
    uniformly in the ``norm`` ball of ``radius`` (pixel units) around the clean image; M = 0
    switches it off. M costs M explanations (vanilla) and M smoothed estimates of N samples each
    (FViT), so limits.BOUNDS caps it at 64."""

    samples: int = setting(0, json="sensitivity_samples", check=bounded("sensitivity_samples"))
    radius: float = setting(0.02, json="sensitivity_radius", check=bounded("sensitivity_radius"))
    norm: str = setting("Linf", json="sensitivity_norm", check=one_of("sensitivity norm", SENSITIVITY_NORMS))

    @property
    def enabled(self) -> bool:
        return self.samples > 0
