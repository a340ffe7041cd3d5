"""Attention capture (thread safe) and the ViT explanation methods of docs/METHOD.md, section 4.

Capture design. One cached model serves many threads at once, so hooks registered per call on
the shared modules would also see other threads' forward passes. Instead every block's
``attn.attn_drop`` gets one permanent forward hook (a *tap*, installed once per model,
idempotently, under a lock). With timm's fused attention off, ``attn_drop`` receives the
post-softmax attention (B, heads, T, T). A tap writes into the recorder held in a
:class:`contextvars.ContextVar`; outside :func:`capture_attention` the variable is ``None`` and
a tap costs one lookup. Context variables are per thread (and per asyncio task), so concurrent
callers never see each other's attention, and :func:`capture_attention` always resets it.

Explanation methods (all return, per image, a non-negative weight per patch summing to 1; the
prefix-token columns ([CLS], registers) are dropped, negatives clamped to 0, rows renormalised,
an all-zero row becomes uniform 1/P):

- ``raw``: last block, heads fused, [CLS] row.
- ``rollout`` (Abnar & Zuidema 2020): per block heads fused, + identity, rows renormalised,
  multiplied from the first block up (R = A_L ... A_1); [CLS] row.
- ``grad_rollout`` (Chefer et al. 2021, generic): per block Abar = fuse_heads(relu(dA * A)) with
  dA the gradient of the target logit; R = I; R <- R + Abar @ R; [CLS] row.
- ``gradcam``: last block, each head's [CLS] row weighted by that head's mean gradient over the
  [CLS] row's patch columns, relu, heads fused.
- ``transformer_attribution``, ``lrp``, ``partial_lrp``: the LRP baselines of Chefer et al.
  (CVPR 2021), computed by :mod:`fvit_core.explanations.lrp` (relevance rules there and in
  docs/EXPLANATIONS.md); their signed relevances go through the same clamp and renormalisation.
- ``attr_rollout`` (Xu et al. 2022, Attribution Rollout): per block S_l = fuse_heads(A * dF_l/dA) / 2
  with F_l the target's *exit logit* of block l (the final norm and head applied to block l's
  output); W_l = (S_l + I) row-normalised, R = W_L ... W_1; [CLS] row; signed
  (:mod:`fvit_core.explanations.attribution_rollout`). The authors fuse heads by the maximum.

Head fusion (``mean``, ``max``, ``min``) replaces the mean over heads in every method;
attr_rollout's authors fuse by the maximum, so its published form is ``head_fusion="max"``.

Cost. ``raw`` on timm's stock ViT blocks skips the capture and computes only what it reads
(fused attention in the earlier blocks, the [CLS] query alone in the last block; see
explanations.raw_path); the other methods capture through the taps, keeping only the layers (and,
for ``raw``-like reads, the [CLS] row) they use.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from fvit_core.data import pixels
from fvit_core.data.pixels import is_uniform_rescale
from fvit_core.errors import InputError, SettingError
from fvit_core.explanations.attribution_rollout import (attention_attribution, attribution_rollout_matrix,
                                                        block_exit_logits, exit_gradients)
from fvit_core.explanations.lrp import lrp_patch_relevance
from fvit_core.explanations.settings import (EXPLANATION_METHODS, GRADIENT_METHODS, LRP_METHODS, SIGNED_METHODS,
                                             ExplanationSettings, check_head_fusion, check_method)
from fvit_core.models import PixelViT
from fvit_core.explanations.raw_path import raw_cls_path, supports_cls_path

# Pixels slightly outside [0, 1] from float round-off (resizing, attacks) are accepted.
_PIXEL_TOLERANCE = 1e-5


# --------------------------------------------------------------------------------------------
# Capture: permanent taps + a per-context recorder
# --------------------------------------------------------------------------------------------


@dataclass
class AttentionRecord:
    """Attention recorded during one :func:`capture_attention` block.

    ``maps[l]`` is block ``l``'s attention after softmax: (B, heads, T, T), or (B, heads, T)
    (the [CLS] row only) when captured with ``cls_only``. A second forward pass inside the same
    block overwrites the first; ``n_calls`` counts the taps that fired for the captured model
    (one per block and forward pass, recorded or not).
    """

    layers: frozenset[int] | None
    cls_only: bool
    keep_grad: bool
    maps: dict[int, Tensor] = field(default_factory=dict)
    n_calls: int = 0

    def layer_maps(self) -> list[Tensor]:
        """The recorded maps in block order."""
        return [self.maps[layer] for layer in sorted(self.maps)]


class _TapToken:
    """Identity of one model's taps, so a capture on model A ignores model B's forward pass."""


@dataclass
class _ActiveCapture:
    token: _TapToken
    record: AttentionRecord


_ACTIVE: contextvars.ContextVar[_ActiveCapture | None] = contextvars.ContextVar(
    "fvit_attention_capture", default=None
)
_INSTALL_LOCK = threading.Lock()
_TOKEN_ATTR = "_fvit_attention_tap_token"


class _AttentionTap:
    """Forward hook on ``attn_drop`` of block ``layer``; records only inside a capture."""

    def __init__(self, layer: int, token: _TapToken) -> None:
        self.layer = layer
        self.token = token

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        active = _ACTIVE.get()
        if active is None or active.token is not self.token:
            return
        record = active.record
        record.n_calls += 1
        if record.layers is not None and self.layer not in record.layers:
            return
        attn = output[:, :, 0, :] if record.cls_only else output
        # Keeping the graph costs memory; without keep_grad the record must not pin it.
        record.maps[self.layer] = attn if record.keep_grad else attn.detach()


def _vit_of(model: nn.Module) -> nn.Module:
    vit = getattr(model, "vit", model)
    if not hasattr(vit, "blocks"):
        raise ValueError(f"{type(model).__name__} has no transformer blocks; pass a PixelViT")
    return vit


def install_attention_taps(model: nn.Module) -> int:
    """Install the attention taps on ``model`` (a PixelViT or timm ViT) once; idempotent.

    Thread safe. Returns the number of blocks tapped. Raises ValueError if a block still uses
    fused attention (its attention weights would never be materialised, so captures stay empty).
    """
    vit = _vit_of(model)
    if getattr(vit, _TOKEN_ATTR, None) is not None:
        return len(vit.blocks)
    with _INSTALL_LOCK:
        if getattr(vit, _TOKEN_ATTR, None) is not None:  # another thread won the race
            return len(vit.blocks)
        for index, block in enumerate(vit.blocks):
            if getattr(block.attn, "fused_attn", False):
                raise ValueError(
                    f"block {index} uses fused attention, which never materialises attention "
                    "weights; wrap the ViT in PixelViT or call models.disable_fused_attention"
                )
        token = _TapToken()
        for index, block in enumerate(vit.blocks):
            block.attn.attn_drop.register_forward_hook(_AttentionTap(index, token))
        # Set last, so a concurrent reader never sees a token without its hooks.
        setattr(vit, _TOKEN_ATTR, token)
    return len(vit.blocks)


def _normalise_layers(layers: Sequence[int] | None, depth: int) -> frozenset[int] | None:
    if layers is None:
        return None
    chosen = set()
    for layer in layers:
        if not -depth <= int(layer) < depth:
            raise SettingError(
                f"layer {layer} out of range for a ViT with {depth} blocks (use 0..{depth - 1} or negatives)"
            )
        chosen.add(int(layer) % depth)
    return frozenset(chosen)


@contextlib.contextmanager
def capture_attention(
    model: nn.Module,
    *,
    layers: Sequence[int] | None = None,
    cls_only: bool = False,
    keep_grad: bool = False,
) -> Iterator[AttentionRecord]:
    """Record the attention of ``model``'s forward passes run in this thread inside the block.

    Args:
        model: a PixelViT (or timm ViT); taps are installed on first use.
        layers: block indices to keep (negatives count from the end); default all.
        cls_only: keep only the [CLS] query row, (B, heads, T) instead of (B, heads, T, T).
        keep_grad: keep the maps in the autograd graph. To differentiate *with respect to* the
            attention (torch.autograd.grad(out, record.layer_maps())), capture full maps
            (cls_only=False): a [CLS] slice is not itself used by the forward pass.

    Yields the :class:`AttentionRecord` that fills as the model runs. Other threads, and other
    models in this thread, are not recorded.
    """
    install_attention_taps(model)
    vit = _vit_of(model)
    record = AttentionRecord(
        layers=_normalise_layers(layers, len(vit.blocks)), cls_only=cls_only, keep_grad=keep_grad
    )
    reset = _ACTIVE.set(_ActiveCapture(token=getattr(vit, _TOKEN_ATTR), record=record))
    try:
        yield record
    finally:
        _ACTIVE.reset(reset)


# --------------------------------------------------------------------------------------------
# Building blocks: head fusion, normalisation, rollout
# --------------------------------------------------------------------------------------------


def fuse_heads(attn: Tensor, head_fusion: str) -> Tensor:
    """Fuse the heads axis (dim 1) of (B, heads, ...) by mean, max or min -> (B, ...)."""
    check_head_fusion(head_fusion)
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    return attn.amin(dim=1)


def normalise_patch_weights(weights: Tensor) -> Tensor:
    """Clamp (B, P) weights at 0 and renormalise rows to sum 1; all-zero rows become 1/P.

    Differentiable (the zero-sum branch never divides by zero, so no NaN gradients).
    """
    weights = weights.clamp(min=0.0)
    total = weights.sum(dim=-1, keepdim=True)
    positive = total > 0
    safe_total = torch.where(positive, total, torch.ones_like(total))
    uniform = torch.full_like(weights, 1.0 / weights.shape[-1])
    return torch.where(positive, weights / safe_total, uniform)


def rollout_layer_matrix(attn: Tensor, head_fusion: str = ExplanationSettings.head_fusion) -> Tensor:
    """One rollout factor: fuse heads of (B, heads, T, T), add I, renormalise rows -> (B, T, T).

    Rows sum to 1 for every fusion (the identity keeps every row sum positive).
    """
    fused = fuse_heads(attn, head_fusion)
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    augmented = fused + eye
    return augmented / augmented.sum(dim=-1, keepdim=True)


def rollout_matrix(layer_attn: Sequence[Tensor], head_fusion: str = ExplanationSettings.head_fusion) -> Tensor:
    """Attention rollout R = A_L ... A_1 of per-block (B, heads, T, T) maps -> (B, T, T).

    A product of row-stochastic matrices, so every row of R sums to 1 (Abnar & Zuidema 2020).
    """
    if not layer_attn:
        raise ValueError("rollout needs the attention of at least one block")
    result = rollout_layer_matrix(layer_attn[0], head_fusion)
    for attn in layer_attn[1:]:
        result = rollout_layer_matrix(attn, head_fusion) @ result
    return result


def grad_rollout_matrix(
    layer_attn: Sequence[Tensor], layer_grads: Sequence[Tensor], head_fusion: str = ExplanationSettings.head_fusion
) -> Tensor:
    """Chefer et al. 2021 generic relevance: R = I; R <- R + fuse(relu(dA * A)) @ R -> (B, T, T)."""
    if len(layer_attn) == 0 or len(layer_attn) != len(layer_grads):
        raise ValueError("grad_rollout needs one gradient per captured block")
    batch, _, tokens, _ = layer_attn[0].shape
    eye = torch.eye(tokens, dtype=layer_attn[0].dtype, device=layer_attn[0].device)
    relevance = eye.expand(batch, tokens, tokens)
    for attn, grad in zip(layer_attn, layer_grads):
        relevance = relevance + fuse_heads((grad * attn).clamp(min=0.0), head_fusion) @ relevance
    return relevance


# --------------------------------------------------------------------------------------------
# The methods: a small registry; each reduces captured maps (and grads) to (B, P) weights
# --------------------------------------------------------------------------------------------


Reducer = Callable[[list[Tensor], "list[Tensor] | None", str, int], Tensor]


@dataclass(frozen=True)
class _MethodSpec:
    needs_grad: bool
    last_layer_only: bool
    cls_only: bool
    reduce: Reducer  # (maps, grads, head_fusion, num_prefix_tokens) -> (B, P), not normalised
    # grads[l] = d(block l's exit logit)/dA_l (attribution_rollout.exit_gradients) instead of
    # d(final logit)/dA_l.
    exit_grads: bool = False


def _reduce_raw(maps: list[Tensor], grads: list[Tensor] | None, fusion: str, prefix: int) -> Tensor:
    return fuse_heads(maps[-1], fusion)[:, prefix:]


def _reduce_rollout(maps: list[Tensor], grads: list[Tensor] | None, fusion: str, prefix: int) -> Tensor:
    return rollout_matrix(maps, fusion)[:, 0, prefix:]


def _reduce_grad_rollout(maps: list[Tensor], grads: list[Tensor] | None, fusion: str, prefix: int) -> Tensor:
    assert grads is not None
    return grad_rollout_matrix(maps, grads, fusion)[:, 0, prefix:]


def _reduce_gradcam(maps: list[Tensor], grads: list[Tensor] | None, fusion: str, prefix: int) -> Tensor:
    assert grads is not None
    cls_attn, cls_grad = maps[-1][:, :, 0, prefix:], grads[-1][:, :, 0, prefix:]
    head_weight = cls_grad.mean(dim=-1, keepdim=True)  # (B, heads, 1), as in Chefer et al.'s code
    return fuse_heads((cls_attn * head_weight).clamp(min=0.0), fusion)


def _reduce_attr_rollout(maps: list[Tensor], grads: list[Tensor] | None, fusion: str, prefix: int) -> Tensor:
    assert grads is not None
    fused = [fuse_heads(attention_attribution(attn, grad), fusion) for attn, grad in zip(maps, grads)]
    return attribution_rollout_matrix(fused)[:, 0, prefix:]


_METHODS: dict[str, _MethodSpec] = {
    "raw": _MethodSpec(needs_grad=False, last_layer_only=True, cls_only=True, reduce=_reduce_raw),
    "rollout": _MethodSpec(needs_grad=False, last_layer_only=False, cls_only=False, reduce=_reduce_rollout),
    "grad_rollout": _MethodSpec(needs_grad=True, last_layer_only=False, cls_only=False, reduce=_reduce_grad_rollout),
    "gradcam": _MethodSpec(needs_grad=True, last_layer_only=True, cls_only=False, reduce=_reduce_gradcam),
    "attr_rollout": _MethodSpec(needs_grad=True, last_layer_only=False, cls_only=False, reduce=_reduce_attr_rollout,
                                exit_grads=True),
}
assert all(spec.needs_grad == (name in GRADIENT_METHODS) for name, spec in _METHODS.items())
# The LRP methods propagate relevance with their own traced forward pass (fvit_core.explanations.lrp); the spec
# only says whether they differentiate the logits (transformer_attribution reads dy/dA).
_LRP_SPECS: dict[str, _MethodSpec] = {
    name: _MethodSpec(needs_grad=name in GRADIENT_METHODS, last_layer_only=False, cls_only=False,
                      reduce=_reduce_raw)
    for name in LRP_METHODS
}
assert sorted((*_METHODS, *_LRP_SPECS)) == sorted(EXPLANATION_METHODS)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_method(method: str) -> _MethodSpec:
    check_method(method)
    return _LRP_SPECS[method] if method in _LRP_SPECS else _METHODS[method]


def _check_model(model: PixelViT) -> None:
    if getattr(model.vit, "cls_token", None) is None:
        raise SettingError("explanations read the [CLS] row of attention; this ViT has no class token")


def check_model_input(model: PixelViT, x: Tensor) -> None:
    """Raise InputError unless ``x`` is a float (B, 3, H, W) batch in [0, 1] of the model's size or
    a uniform rescale of it (the smoothing space, which the model resizes as its first layer)."""
    if not isinstance(x, Tensor):
        raise InputError(f"expected a torch.Tensor of pixels, got {type(x).__name__}")
    size = tuple(model.img_size)
    if x.dim() != 4 or x.shape[1] != 3 or not is_uniform_rescale(tuple(x.shape[-2:]), size):
        raise InputError(
            f"expected pixels of shape (B, 3, {size[0]}, {size[1]}) or a uniform rescale of it, got "
            f"{tuple(x.shape)}; add a batch axis with x[None] and prepare the image with images.prepare_image"
        )
    pixels.check_pixels(x, batched=True, tolerance=_PIXEL_TOLERANCE)


def _check_target(
    model: PixelViT, target: Tensor | int | Sequence[int] | None, batch: int, device: torch.device
) -> Tensor | None:
    if target is None:
        return None
    target = torch.as_tensor(target, device=device).reshape(-1)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise InputError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.numel() == 1 and batch > 1:
        target = target.expand(batch)
    if target.numel() != batch:
        raise InputError(f"target has {target.numel()} entries for a batch of {batch}; pass one class per image")
    if bool(((target < 0) | (target >= model.num_classes)).any()):
        raise SettingError(f"target classes must be in 0..{model.num_classes - 1}, got {target.tolist()}")
    return target.long()


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass
class Explanation:
    """The output of :func:`explain` for a batch.

    Attributes:
        logits: (B, C) classifier logits of the same forward pass.
        attention: (B, P) float, non-negative, rows sum to 1 (P = model.num_patches, row-major
            over the patch grid).
        target: (B,) long, the class whose logit the gradient methods explain (argmax if not
            given; recorded for every method).
        method, head_fusion: what produced ``attention``.
        relevance: for the signed methods (explanations.settings.SIGNED_METHODS), the (B, P)
            relevances before the clamp, divided by their absolute sum (so sum |r| = 1); None
            for the others, whose maps are non-negative.

    Tensors are detached unless ``explain(..., differentiable=True)`` was asked for.
    """

    logits: Tensor
    attention: Tensor
    target: Tensor
    method: str
    head_fusion: str
    relevance: Tensor | None = None


def signed_patch_weights(weights: Tensor) -> Tensor:
    """(B, P) signed weights divided by their absolute row sum (all-zero rows stay zero)."""
    total = weights.abs().sum(dim=-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def _compute(
    model: PixelViT, x: Tensor, spec: _MethodSpec, head_fusion: str, target: Tensor | None, *, create_graph: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward pass with capture; returns (logits, unnormalised (B, P) weights, target)."""
    layers = [-1] if spec.last_layer_only else None
    keep_grad = spec.needs_grad or create_graph
    with capture_attention(model, layers=layers, cls_only=spec.cls_only, keep_grad=keep_grad) as record:
        if spec.exit_grads:
            exits = block_exit_logits(model.vit, model.input_layer(x))
            logits = exits[-1]  # the last block's exit is the model's forward pass
        else:
            logits = model(x)
    maps = record.layer_maps()
    if len(maps) != (1 if spec.last_layer_only else model.depth):
        raise ValueError(
            f"captured {len(maps)} attention maps, expected one per requested block; was fused "
            "attention switched back on? (models.disable_fused_attention)"
        )
    chosen = logits.detach().argmax(dim=-1) if target is None else target
    grads = None
    if spec.exit_grads:
        grads = exit_gradients(exits, maps, chosen, create_graph=create_graph)
    elif spec.needs_grad:
        target_logit = logits.gather(1, chosen[:, None]).sum()  # samples are independent in eval mode
        grads = list(torch.autograd.grad(target_logit, maps, create_graph=create_graph))
    return logits, spec.reduce(maps, grads, head_fusion, model.num_prefix_tokens), chosen


def explain(
    model: PixelViT,
    x: Tensor,
    *,
    method: str = ExplanationSettings.method,
    head_fusion: str = ExplanationSettings.head_fusion,
    target: Tensor | int | Sequence[int] | None = None,
    differentiable: bool = False,
) -> Explanation:
    """Explain a batch of [0, 1] pixels ``x`` (B, 3, H, W) with one of EXPLANATION_METHODS.

    Thread safe on a shared model, and usable under torch.inference_mode() / no_grad: gradient
    methods switch autograd on locally (the model's parameters and mode are not touched).
    ``raw`` (not differentiable) takes a fast path on timm's stock blocks that computes only the
    logits and the last block's [CLS] row; same numbers up to float round-off.

    Args:
        method: raw | rollout | grad_rollout | gradcam | transformer_attribution | lrp |
            partial_lrp | attr_rollout (module docstring, METHOD.md section 4, docs/EXPLANATIONS.md).
        head_fusion: mean | max | min over heads.
        target: class per image (or one class for all) whose logit the gradient methods
            differentiate; default the predicted class.
        differentiable: keep ``logits`` and ``attention`` in the autograd graph of ``x`` (for
            attacks on the explanation; gradient methods then use create_graph=True). Must be
            called outside inference mode.

    Returns an :class:`Explanation` with (B, C) logits and (B, P) attention rows summing to 1.
    """
    spec = _check_method(method)
    check_head_fusion(head_fusion)
    _check_model(model)
    check_model_input(model, x)
    chosen = _check_target(model, target, x.shape[0], x.device)
    if method in _LRP_SPECS:
        logits, weights, chosen = _explain_lrp(model, x, method, head_fusion, chosen, differentiable)
    elif differentiable:
        logits, weights, chosen = _explain_differentiable(model, x, spec, head_fusion, chosen)
    elif spec.needs_grad:
        # Inference tensors cannot enter autograd: clone outside inference mode. x itself requires
        # grad so a graph exists even for a model whose parameters are frozen.
        with torch.inference_mode(False), torch.enable_grad():
            x_graph = x.detach().clone().requires_grad_(True)
            chosen = None if chosen is None else chosen.clone()  # gather saves it for backward
            logits, weights, chosen = _compute(model, x_graph, spec, head_fusion, chosen, create_graph=False)
            logits, weights = logits.detach(), weights.detach()
    elif method == "raw" and supports_cls_path(model):
        with torch.no_grad():
            logits, cls_attention = raw_cls_path(model, x)
        weights = fuse_heads(cls_attention, head_fusion)[:, model.num_prefix_tokens:]
        chosen = logits.argmax(dim=-1) if chosen is None else chosen
    else:
        with torch.no_grad():
            logits, weights, chosen = _compute(model, x, spec, head_fusion, chosen, create_graph=False)
    return Explanation(
        logits=logits, attention=normalise_patch_weights(weights), target=chosen, method=method, head_fusion=head_fusion,
        relevance=signed_patch_weights(weights) if method in SIGNED_METHODS else None,
    )


def _explain_differentiable(
    model: PixelViT, x: Tensor, spec: _MethodSpec, head_fusion: str, target: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "explain(differentiable=True) builds an autograd graph; call it outside torch.inference_mode() "
            "(or use differentiable=False for a detached map)"
        )
    with torch.enable_grad():
        x_graph = x if x.requires_grad or not spec.needs_grad else x.detach().requires_grad_(True)
        return _compute(model, x_graph, spec, head_fusion, target, create_graph=True)


def _explain_lrp(
    model: PixelViT, x: Tensor, method: str, head_fusion: str, target: Tensor | None, differentiable: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The LRP methods on pixels ``x``: (logits, unnormalised (B, P) relevance, target)."""
    if differentiable:
        if torch.is_inference_mode_enabled():
            raise ValueError(
                "explain(differentiable=True) builds an autograd graph; call it outside torch.inference_mode() "
                "(or use differentiable=False for a detached map)"
            )
        with torch.enable_grad():
            x_graph = x if x.requires_grad else x.detach().requires_grad_(True)
            return lrp_patch_relevance(model.vit, model.input_layer(x_graph), method, target=target,
                                       head_fusion=head_fusion, create_graph=True)
    if method == "transformer_attribution":
        # As for the gradient methods: a fresh tensor outside inference mode, autograd on locally.
        with torch.inference_mode(False), torch.enable_grad():
            x_graph = x.detach().clone().requires_grad_(True)
            target = None if target is None else target.clone()
            logits, weights, chosen = lrp_patch_relevance(
                model.vit, model.input_layer(x_graph), method, target=target, head_fusion=head_fusion
            )
            return logits.detach(), weights.detach(), chosen
    with torch.no_grad():
        return lrp_patch_relevance(model.vit, model.input_layer(x), method, target=target,
                                   head_fusion=head_fusion)


def layer_head_maps(model: PixelViT, x: Tensor) -> Tensor:
    """[CLS]-row attention on the patches for every block and head: (B, L, heads, P).

    The softmax weights restricted to the patch columns, not renormalised (the prefix columns
    carry the rest of each row's mass), so ``normalise_patch_weights(maps[:, -1].mean(1))`` is the
    ``raw`` explanation. For the per-layer / per-head explorer view.
    """
    _check_model(model)
    check_model_input(model, x)
    with torch.no_grad(), capture_attention(model, cls_only=True) as record:
        model(x)
    return torch.stack(record.layer_maps(), dim=1)[..., model.num_prefix_tokens:]
