"""The fast path of the ``raw`` explanation (explanations.attention.explain): a speed strategy.

``raw`` needs the logits and the last block's [CLS] attention row, nothing else. With timm's
stock blocks and a [CLS]-token head, the last block's output matters only at the [CLS] token,
so that block runs for the [CLS] query alone (its keys and values still see every token), and
the earlier blocks use fused scaled-dot-product attention, whose weights nobody reads. Same
numbers as the generic path up to float round-off (tested), about a sixth fewer FLOPs, no
hooks (so nothing to capture and nothing shared between threads). Any other architecture, and
a model in training mode, takes the generic path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvit_core.models import PixelViT


def supports_cls_path(model: PixelViT) -> bool:
    """True when the fast ``raw`` path computes exactly what ``model(x)`` computes."""
    from timm.models.vision_transformer import Attention, Block

    vit = model.vit
    if model.training or vit.training or getattr(vit, "global_pool", None) != "token":
        return False
    if getattr(vit, "attn_pool", None) is not None:
        return False
    return all(
        type(block) is Block and type(block.attn) is Attention and getattr(block.attn, "gate", None) is None
        for block in vit.blocks
    )


def _attention_output(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale) v. Fused kernels where they are faster: float32, or any GPU; on a
    CPU in bfloat16 the explicit product (PyTorch's fused kernel was slower there: the
    measurement is in docs/PERFORMANCE.md)."""
    if q.dtype == torch.float32 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def _fused_block(block: nn.Module, x: Tensor) -> Tensor:
    """timm's Block.forward without keeping the attention weights (nobody reads them here)."""
    attn = block.attn
    batch, tokens, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    out = _attention_output(attn.q_norm(q), attn.k_norm(k), v, attn.scale)
    out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(batch, tokens, attn.attn_dim))))
    x = x + block.drop_path1(block.ls1(out))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _cls_block(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The last block for the [CLS] query only: ([CLS] output (B, 1, C), its attention (B, heads, T)).

    The attention row is computed in float32 whatever the model's dtype: it is the explanation.
    """
    attn = block.attn
    batch, tokens, _ = x.shape
    hidden = block.norm1(x)
    dim = attn.attn_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(hidden[:, :1], weight[:dim], None if bias is None else bias[:dim])
    kv = F.linear(hidden, weight[dim:], None if bias is None else bias[dim:])
    q = q.reshape(batch, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k, v = kv.reshape(batch, tokens, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, T)
    out = (weights.to(v.dtype) @ v).transpose(1, 2).reshape(batch, 1, dim)
    cls = x[:, :1] + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(attn.norm(out)))))
    cls = cls + block.drop_path2(block.ls2(block.mlp(block.norm2(cls))))
    return cls, weights[:, :, 0]


def raw_cls_path(model: PixelViT, x: Tensor) -> tuple[Tensor, Tensor]:
    """(logits (B, C), the last block's [CLS] attention row per head (B, heads, T), float32) of
    ``model`` on pixels ``x``."""
    vit = model.vit
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(model.input_layer(x)))))
    for block in vit.blocks[:-1]:
        tokens = _fused_block(block, tokens)
    cls, cls_attn = _cls_block(vit.blocks[-1], tokens)
    return vit.forward_head(vit.norm(cls)), cls_attn
