"""Attribution Rollout: L. Xu, X. Yan, W. Ding, Z. Liu, "Attribution rollout: a new way to
interpret visual transformer", J. Ambient Intell. Humaniz. Comput. (2022).

What is computed (docs/EXPLANATIONS.md gives the agreement with the authors' code). For a ViT
with blocks l = 1..L, attention A_l (B, heads, T, T) after softmax and residual stream z_l after
block l, the *exit logits* of block l are the classifier applied early, F_l = head(pool(norm(z_l)))
(the model's own final norm, pooling and head; F_L are the model's logits). For the explained
class c:

- per block and head, the attribution of the attention weights to that block's exit logit,
  S_l = 1/2 * A_l * dF_l[c]/dA_l (elementwise; in logit units: the first-order share of F_l[c]
  each attention weight carries). The factor 1/2 is the authors' integrated-gradients weight:
  their code evaluates the gradient once, at A_l, and scales it by the Riemann sum
  (1/m) sum_k alpha_k over alpha = linspace(0, 1, m), m = 20, which is 10/20 = 1/2 (and so is
  the integral of alpha over [0, 1]);
- heads fused (the authors take the maximum over heads: ``head_fusion="max"``), giving S_l
  (B, T, T), signed;
- rollout with the residual as in attention rollout: W_l = (S_l + I) / rowsum(S_l + I),
  R = W_L ... W_1, and the [CLS] row's patch columns R[:, 0, prefix:] (signed, dimensionless).

Unlike Chefer et al.'s rollouts the per-block matrices are not clamped, so the result can be
negative; :func:`fvit_core.explanations.attention.explain` clamps and renormalises it like every
method and also reports the signed map (explanations.settings.SIGNED_METHODS). The authors' code
divides by the row sums as they are; so do we, except that an exactly zero row sum leaves that
row undivided instead of producing inf/NaN.

The functions here are stateless: the attention comes from the caller's capture
(attention.capture_attention with keep_grad=True around :func:`block_exit_logits`), so one
cached model serves many threads.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

# (1/m) * sum(linspace(0, 1, m)) for the authors' m = 20 steps: (1/20) * 10.
IG_WEIGHT = 0.5


def block_exit_logits(vit: nn.Module, inputs: Tensor) -> list[Tensor]:
    """Run a timm VisionTransformer on normalised ``inputs`` (B, 3, H, W) block by block and
    return the exit logits of every block, [F_1, ..., F_L], each (B, classes).

    F_l applies the model's final norm, pooling and head to block l's output, so F_L equals
    ``vit(inputs)`` (the same modules in the same order as timm's forward_features / forward_head).
    """
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(inputs))))
    exits = []
    for block in vit.blocks:
        x = block(x)
        exits.append(vit.forward_head(vit.norm(x)))
    return exits


def exit_gradients(
    exits: Sequence[Tensor], layer_attn: Sequence[Tensor], target: Tensor, *, create_graph: bool = False
) -> list[Tensor]:
    """dF_l[target]/dA_l for every block l: (B, heads, T, T) each, in logits per unit attention.

    Each block's attention is differentiated against its own exit logit (not the model's final
    logit), one backward pass per block; these are short, since F_l depends on A_l only through
    the rest of block l. Images are independent in eval mode, so summing the batch's target
    logits gives every image its own gradient.
    """
    if len(exits) == 0 or len(exits) != len(layer_attn):
        raise ValueError(f"attr_rollout needs one exit per captured block, got {len(exits)} exits "
                         f"and {len(layer_attn)} attention maps")
    grads = []
    for logits, attn in zip(exits, layer_attn):
        target_logit = logits.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(target_logit, attn, retain_graph=True, create_graph=create_graph)
        grads.append(grad)
    return grads


def attention_attribution(attn: Tensor, grad: Tensor) -> Tensor:
    """Per-head attribution S = IG_WEIGHT * A * dF/dA of one block: (B, heads, T, T), signed,
    in logit units."""
    return IG_WEIGHT * attn * grad


def attribution_rollout_matrix(layer_attributions: Sequence[Tensor]) -> Tensor:
    """R = W_L ... W_1 with W_l = (S_l + I) / rowsum(S_l + I), from the heads-fused (B, T, T)
    attributions S_1..S_L -> (B, T, T).

    Rows of every W_l sum to 1 (so do R's), but entries may be negative: S_l is signed.
    """
    if not layer_attributions:
        raise ValueError("attr_rollout needs the attribution of at least one block")
    first = layer_attributions[0]
    eye = torch.eye(first.shape[-1], dtype=first.dtype, device=first.device)
    result = None
    for attribution in layer_attributions:
        augmented = attribution + eye
        total = augmented.sum(dim=-1, keepdim=True)
        # The reference divides by whatever the sum is; only an exact 0 is kept from becoming inf.
        factor = augmented / torch.where(total == 0, torch.ones_like(total), total)
        result = factor if result is None else factor @ result
    assert result is not None
    return result


__all__: Sequence[str] = (
    "IG_WEIGHT",
    "attention_attribution",
    "attribution_rollout_matrix",
    "block_exit_logits",
    "exit_gradients",
)
