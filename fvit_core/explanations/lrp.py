"""Layer-wise relevance propagation (LRP) through timm ViT blocks: the LRP explanation baselines
of Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization" (CVPR 2021).

Three methods (docs/EXPLANATIONS.md gives the rules, their sources, and the agreement with the
authors' implementation on the shipped classifier):

- ``transformer_attribution`` (Chefer et al.'s method): per block the relevance map R(A) of the
  attention matrix times its gradient dy_t/dA, negatives removed, heads fused (mean by default);
  rolled out with the identity, R = prod_l (Abar_l + I) (no row normalisation); [CLS] row.
- ``lrp`` (full LRP, Binder et al. 2016 as run by Chefer et al.): relevance propagated to the
  input pixels (z^B rule in the patch embedding), summed per patch.
- ``partial_lrp`` (Voita et al. 2019 as run by Chefer et al.): the relevance map of the last
  block's attention matrix, negatives removed, heads fused, [CLS] row.

Rules (as in the authors' code; biases are left out of every layer rule, as there):

- Linear layers, LRP-alpha1-beta0 on signed inputs: with x+ = max(x, 0), x- = min(x, 0),
  w+ = max(w, 0), w- = min(w, 0), Z1 = x+ w+^T, Z2 = x- w-^T (both non-negative):
  ``conservative`` (transformer_attribution): R_in = x+ (S w+) + x- (S w-), S = R / (Z1 + Z2);
  ``plain`` (lrp, partial_lrp): R_in = x+ ((R / Z1) w+) + x- ((R / Z2) w-), each part carrying
  all of R (the authors' "orig" LRP layers).
- Residual additions a + b, z-rule R_a = a R / (a + b); ``conservative`` rescales the two parts
  so that per image |sum R_a| : |sum R_b| is kept and R_a + R_b sums to sum R.
- Products of two tensors (Q K^T, A V): z-rule to both factors, each half of the relevance.
- LayerNorm, GELU, softmax, LayerScale, dropout: relevance passes unchanged.
- Token copies (the input of a residual block feeds the residual and the branch): summed.
- Patch embedding (``lrp`` only): z^B rule with the per-image minimum and maximum of the
  normalised input as bounds.

The start relevance is the one-hot vector of the explained class. Divisions are stabilised as
in the authors' code: a / (b + 1e-9), and 0 where b is exactly 0.

Everything here is functional: activations live in local :class:`_BlockTrace` objects built
per call, nothing is stored on the model, so one cached model serves many threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvit_core.errors import SettingError
from fvit_core.explanations.settings import LRP_METHODS, ExplanationSettings

RULES: tuple[str, ...] = ("conservative", "plain")

# The stabiliser of the authors' safe division, and of their z^B denominator.
_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# Relevance rules (each: relevance at a layer's output -> relevance at its input(s))
# --------------------------------------------------------------------------------------------


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """a / (b + 1e-9), and 0 wherever b is exactly 0 (no relevance flows through a zero)."""
    den = b + _EPS
    den = torch.where(den == 0, torch.full_like(den, _EPS), den)
    return torch.where(b == 0, torch.zeros_like(a), a / den)


def linear_relevance(x: Tensor, weight: Tensor, relevance: Tensor, rule: str) -> Tensor:
    """LRP-alpha1-beta0 through y = x W^T (bias ignored): (..., out) relevance -> (..., in).

    ``conservative`` keeps sum(R_in) = sum(R_out) wherever an output's Z1 + Z2 is non-zero;
    ``plain`` sends all of R through the positive and the negative part separately.
    """
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    z_pos = x_pos @ w_pos.T
    z_neg = x_neg @ w_neg.T
    if rule == "conservative":
        s = safe_divide(relevance, z_pos + z_neg)
        return x_pos * (s @ w_pos) + x_neg * (s @ w_neg)
    if rule == "plain":
        return x_pos * (safe_divide(relevance, z_pos) @ w_pos) + x_neg * (safe_divide(relevance, z_neg) @ w_neg)
    raise SettingError(f"unknown LRP rule {rule!r}; valid: {', '.join(RULES)}")


def add_relevance(a: Tensor, b: Tensor, relevance: Tensor, rule: str) -> tuple[Tensor, Tensor]:
    """z-rule through a + b: (R_a, R_b) with R_a = a R / (a + b).

    ``conservative`` rescales per image (leading axis) so R_a and R_b sum to sum(R) in the ratio
    |sum a R/(a+b)| : |sum b R/(a+b)| (the residual correction of Chefer et al.).
    """
    s = safe_divide(relevance, a + b)
    rel_a, rel_b = a * s, b * s
    if rule == "plain":
        return rel_a, rel_b
    if rule != "conservative":
        raise SettingError(f"unknown LRP rule {rule!r}; valid: {', '.join(RULES)}")
    dims = tuple(range(1, relevance.dim()))
    sum_a, sum_b = rel_a.sum(dim=dims, keepdim=True), rel_b.sum(dim=dims, keepdim=True)
    total = relevance.sum(dim=dims, keepdim=True)
    denom = sum_a.abs() + sum_b.abs()
    share_a = safe_divide(sum_a.abs(), denom) * total
    share_b = safe_divide(sum_b.abs(), denom) * total
    return rel_a * safe_divide(share_a, sum_a), rel_b * safe_divide(share_b, sum_b)


def matmul_relevance(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """z-rule through a @ b to both factors, each getting half: (R_a, R_b)."""
    s = safe_divide(relevance, a @ b)
    return a * (s @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ s) / 2


def copy_relevance(x: Tensor, *relevances: Tensor) -> Tensor:
    """A tensor used twice (residual and branch): the relevances add (x * sum R/x, as the authors)."""
    return x * sum(safe_divide(r, x) for r in relevances)


def patch_embedding_relevance(pixels: Tensor, weight: Tensor, patch: tuple[int, int], relevance: Tensor) -> Tensor:
    """z^B rule through the patch embedding (a conv with kernel = stride = patch, bias ignored).

    Args:
        pixels: (B, C, H, W) the normalised input of the convolution.
        weight: (D, C, ph, pw) the convolution kernel.
        relevance: (B, P, D) relevance of the patch tokens (P row-major over the grid).

    Returns (B, P): relevance summed over each patch's pixels and channels. Bounds: the per-image
    minimum and maximum of ``pixels`` (as in the authors' code).
    """
    batch = pixels.shape[0]
    cols = F.unfold(pixels, kernel_size=patch, stride=patch).transpose(1, 2)  # (B, P, C*ph*pw)
    w = weight.reshape(weight.shape[0], -1)
    w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
    low = pixels.reshape(batch, -1).amin(dim=1).view(batch, 1, 1)
    high = pixels.reshape(batch, -1).amax(dim=1).view(batch, 1, 1)
    z = cols @ w.T - low * w_pos.sum(dim=1) - high * w_neg.sum(dim=1) + _EPS
    s = relevance / z
    contributions = cols * (s @ w) - low * (s @ w_pos) - high * (s @ w_neg)
    return contributions.sum(dim=-1)


# --------------------------------------------------------------------------------------------
# The forward pass that keeps what the rules read
# --------------------------------------------------------------------------------------------


@dataclass
class _BlockTrace:
    """Activations of one timm Block (B batch, T tokens, heads h, head dim d), in the rules' dtype."""

    x: Tensor  # block input (B, T, D)
    h1: Tensor  # norm1(x), the qkv input
    q: Tensor  # (B, h, T, d) after q_norm
    k: Tensor
    v: Tensor
    attn: Tensor  # (B, h, T, T) softmax weights (in the graph, for dy/dA)
    merged: Tensor  # (B, T, D) heads merged (after attn.norm), the proj input
    branch1: Tensor  # attention branch output added to x
    x1: Tensor  # x + branch1
    h2: Tensor  # norm2(x1), the fc1 input
    hidden: Tensor  # the fc2 input (after act and mlp.norm)
    branch2: Tensor  # MLP branch output added to x1


@dataclass
class _Trace:
    pixels: Tensor  # (B, C, H, W) normalised model input
    patches: Tensor  # (B, P, D) patch embeddings before the position embedding
    tokens: Tensor  # (B, T, D) tokens after the position embedding (block 0 input before norm_pre)
    blocks: list[_BlockTrace]
    pooled: Tensor  # (B, D) the head input
    logits: Tensor  # (B, C)


def check_lrp_model(vit: nn.Module) -> None:
    """Raise ValueError unless ``vit`` is a timm ViT whose layers the rules cover."""
    from timm.layers import Mlp, PatchEmbed
    from timm.models.vision_transformer import Attention, Block

    if getattr(vit, "global_pool", None) != "token" or getattr(vit, "attn_pool", None) is not None:
        raise SettingError("LRP explanations need a ViT classifying from its [CLS] token (global_pool='token')")
    if not isinstance(vit.head, nn.Linear) or not isinstance(getattr(vit, "fc_norm", nn.Identity()), nn.Identity):
        raise SettingError("LRP explanations need a single linear head on the [CLS] token")
    if getattr(vit, "dynamic_img_size", False):
        raise SettingError("LRP explanations need a fixed input size (dynamic_img_size=False)")
    embed = vit.patch_embed
    proj = getattr(embed, "proj", None)
    if not isinstance(embed, PatchEmbed) or not isinstance(proj, nn.Conv2d) or tuple(proj.kernel_size) != tuple(
        proj.stride
    ) or tuple(proj.padding) != (0, 0):
        raise SettingError("LRP explanations need timm's PatchEmbed (a conv with kernel = stride = patch size)")
    for index, block in enumerate(vit.blocks):
        if type(block) is not Block or type(block.attn) is not Attention or not isinstance(block.mlp, Mlp):
            raise SettingError(
                f"block {index} is {type(block).__name__}; LRP explanations cover timm's stock ViT Block "
                "(Attention + Mlp); use raw / rollout / grad_rollout / gradcam for this model"
            )


def _block_forward(block: nn.Module, x: Tensor) -> _BlockTrace:
    """timm's Block.forward in eval mode, keeping the activations (same numbers as block(x))."""
    attn = block.attn
    batch, tokens, _ = x.shape
    h1 = block.norm1(x)
    qkv = attn.qkv(h1).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    merged = attn.norm((weights @ v).transpose(1, 2).reshape(batch, tokens, -1))
    branch1 = block.ls1(attn.proj(merged))
    x1 = x + branch1
    h2 = block.norm2(x1)
    mlp = block.mlp
    hidden = mlp.norm(mlp.act(mlp.fc1(h2)))
    branch2 = block.ls2(mlp.fc2(hidden))
    return _BlockTrace(x, h1, q, k, v, weights, merged, branch1, x1, h2, hidden, branch2)


def _forward(vit: nn.Module, pixels: Tensor) -> _Trace:
    """The ViT's eval-mode forward pass on normalised ``pixels``, keeping every activation."""
    patches = vit.patch_embed(pixels)
    tokens = vit._pos_embed(patches)
    x = vit.norm_pre(vit.patch_drop(tokens))
    blocks = []
    for block in vit.blocks:
        trace = _block_forward(block, x)
        blocks.append(trace)
        x = trace.x1 + trace.branch2
    pooled = vit.norm(x)[:, 0]
    logits = vit.head(pooled)
    return _Trace(pixels, patches, tokens, blocks, pooled, logits)


# --------------------------------------------------------------------------------------------
# Relevance propagation
# --------------------------------------------------------------------------------------------


def _block_relevance(block: nn.Module, t: _BlockTrace, relevance: Tensor, rule: str) -> tuple[Tensor, Tensor]:
    """(relevance at the block input (B, T, D), relevance of the attention matrix (B, h, T, T))."""
    dtype = t.x.dtype
    rel_res, rel_mlp = add_relevance(t.x1, t.branch2, relevance, rule)
    rel_mlp = linear_relevance(t.hidden, block.mlp.fc2.weight.to(dtype), rel_mlp, rule)
    rel_mlp = linear_relevance(t.h2, block.mlp.fc1.weight.to(dtype), rel_mlp, rule)
    relevance = copy_relevance(t.x1, rel_res, rel_mlp)

    rel_res, rel_attn = add_relevance(t.x, t.branch1, relevance, rule)
    rel_attn = linear_relevance(t.merged, block.attn.proj.weight.to(dtype), rel_attn, rule)
    batch, heads, tokens, head_dim = t.v.shape
    rel_attn = rel_attn.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
    rel_weights, rel_v = matmul_relevance(t.attn, t.v, rel_attn)
    rel_q, rel_kt = matmul_relevance(t.q, t.k.transpose(-2, -1), rel_weights)
    rel_qkv = torch.stack((rel_q, rel_kt.transpose(-2, -1), rel_v))  # (3, B, h, T, d): timm's qkv layout
    rel_qkv = rel_qkv.permute(1, 3, 0, 2, 4).reshape(batch, tokens, 3 * heads * head_dim)
    rel_branch = linear_relevance(t.h1, block.attn.qkv.weight.to(dtype), rel_qkv, rule)
    return copy_relevance(t.x, rel_res, rel_branch), rel_weights


def relevance_pass(
    vit: nn.Module, trace: _Trace, target: Tensor, rule: str, *, down_to: int = 0
) -> tuple[Tensor, list[Tensor | None]]:
    """Propagate the one-hot ``target`` relevance from the logits down to block ``down_to``'s input.

    Returns (relevance at that block's input (B, T, D), per-block attention relevance, None for
    the blocks not reached).
    """
    one_hot = F.one_hot(target, trace.logits.shape[-1]).to(trace.pooled.dtype)
    rel_pooled = linear_relevance(trace.pooled, vit.head.weight.to(trace.pooled.dtype), one_hot, rule)
    last = trace.blocks[-1]
    tokens_out = last.x1 + last.branch2
    relevance = torch.zeros_like(tokens_out)
    # The [CLS] selection as the authors' z-rule: x * R / x (= R wherever x != 0).
    relevance[:, 0] = trace.pooled * safe_divide(rel_pooled, trace.pooled)
    attn_relevance: list[Tensor | None] = [None] * len(trace.blocks)
    for index in range(len(trace.blocks) - 1, down_to - 1, -1):
        relevance, attn_relevance[index] = _block_relevance(vit.blocks[index], trace.blocks[index], relevance, rule)
    return relevance, attn_relevance


# --------------------------------------------------------------------------------------------
# The three explanations
# --------------------------------------------------------------------------------------------


def _fuse(maps: Tensor, head_fusion: str) -> Tensor:
    if head_fusion == "mean":
        return maps.mean(dim=1)
    if head_fusion == "max":
        return maps.amax(dim=1)
    if head_fusion == "min":
        return maps.amin(dim=1)
    raise SettingError(f"unknown head fusion {head_fusion!r}; valid: mean, max, min")


def lrp_patch_relevance(
    vit: nn.Module,
    pixels: Tensor,
    method: str,
    *,
    target: Tensor | None = None,
    head_fusion: str = ExplanationSettings.head_fusion,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LRP explanation of normalised ``pixels`` (B, C, H, W) for a timm ViT ``vit``.

    Args:
        method: transformer_attribution | lrp | partial_lrp (module docstring).
        target: (B,) long classes to explain; default the argmax of the logits.
        head_fusion: how heads are fused (mean in the authors' code; ``lrp`` fuses nothing).
        create_graph: keep the result differentiable with respect to ``pixels`` (for attacks on
            the explanation; transformer_attribution then differentiates twice).

    Returns (logits (B, classes), relevance (B, P) per patch, unnormalised and signed as the rules
    give it, target (B,)). transformer_attribution needs autograd on (it reads dy_t/dA).
    """
    if method not in LRP_METHODS:
        raise SettingError(f"unknown LRP method {method!r}; valid: {', '.join(LRP_METHODS)}")
    check_lrp_model(vit)
    trace = _forward(vit, pixels)
    chosen = trace.logits.detach().argmax(dim=-1) if target is None else target
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    grads: Sequence[Tensor] = ()
    if method == "transformer_attribution":
        target_logit = trace.logits.gather(1, chosen[:, None]).sum()  # images are independent in eval mode
        grads = torch.autograd.grad(target_logit, [b.attn for b in trace.blocks], create_graph=create_graph)
    trace = _float_trace(trace)
    if method == "transformer_attribution":
        _, cams = relevance_pass(vit, trace, chosen, "conservative")
        batch, tokens = trace.tokens.shape[:2]
        rollout = torch.eye(tokens, dtype=trace.pooled.dtype, device=pixels.device).expand(batch, tokens, tokens)
        for cam, grad in zip(cams, grads):
            assert cam is not None
            rollout = rollout + _fuse((grad.to(cam.dtype) * cam).clamp(min=0), head_fusion) @ rollout
        weights = rollout[:, 0, prefix:]
    elif method == "partial_lrp":
        _, cams = relevance_pass(vit, trace, chosen, "plain", down_to=len(trace.blocks) - 1)
        assert cams[-1] is not None
        weights = _fuse(cams[-1].clamp(min=0), head_fusion)[:, 0, prefix:]
    else:
        relevance, _ = relevance_pass(vit, trace, chosen, "plain")
        # Position embedding: z-rule between the patch embeddings and the position codes.
        rel_patches = trace.patches * safe_divide(relevance[:, prefix:], trace.tokens[:, prefix:])
        proj = vit.patch_embed.proj
        weights = patch_embedding_relevance(trace.pixels, proj.weight.to(trace.pixels.dtype), tuple(proj.kernel_size),
                                            rel_patches)
    return trace.logits, weights, chosen


def _float_trace(trace: _Trace) -> _Trace:
    """The relevance rules run in float32 or wider whatever the model's dtype (their divisions need
    it): a bfloat16 trace in float32, a float64 one in float64 (docs/EXPLANATIONS.md compares with
    the reference in float64, where the agreement does not depend on the CPU's kernels)."""
    dtype = torch.promote_types(trace.pooled.dtype, torch.float32)
    if trace.pooled.dtype == dtype:
        return trace

    def f(t: Tensor) -> Tensor:
        return t.to(dtype)

    blocks = [_BlockTrace(*(f(getattr(b, name)) for name in _BlockTrace.__dataclass_fields__)) for b in trace.blocks]
    return _Trace(f(trace.pixels), f(trace.patches), f(trace.tokens), blocks, f(trace.pooled), f(trace.logits))


__all__: Sequence[str] = (
    "RULES",
    "add_relevance",
    "check_lrp_model",
    "copy_relevance",
    "linear_relevance",
    "lrp_patch_relevance",
    "matmul_relevance",
    "patch_embedding_relevance",
    "relevance_pass",
    "safe_divide",
)
