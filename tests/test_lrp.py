"""LRP baselines (fvit_core/explanations/lrp.py): hand-checkable rules, conservation, the traced forward pass, and
agreement with Chefer et al.'s reference implementation (outputs committed as a fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from fvit_core.explanations.attention import explain
from fvit_core.explanations.lrp import (
    add_relevance,
    copy_relevance,
    linear_relevance,
    lrp_patch_relevance,
    matmul_relevance,
    patch_embedding_relevance,
    relevance_pass,
)
from fvit_core.explanations.lrp import _forward  # the trace the conservation test walks
from fvit_core.explanations.settings import LRP_METHODS, float32_only, needs_gradients
from fvit_core.runtime.precision import resolve_precision

FIXTURE = Path(__file__).parent / "fixtures" / "lrp_reference.npz"
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "models" / "cifar10-vit"


# ------------------------------------------------------------------------- hand-checked rules


def test_linear_rule_by_hand():
    # y = x W^T with x = (1, -2), W = [[1, -1], [2, 1]]: Z1 = x+ w+ = (1, 2), Z2 = x- w- = (2, 0).
    x = torch.tensor([[1.0, -2.0]])
    w = torch.tensor([[1.0, -1.0], [2.0, 1.0]])
    r = torch.tensor([[3.0, 4.0]])
    # conservative: S = R / (Z1 + Z2) = (1, 2); R_in = x+ (S w+) + x- (S w-) = (1*(1+4), -2*(-1)) = (5, 2)
    torch.testing.assert_close(linear_relevance(x, w, r, "conservative"), torch.tensor([[5.0, 2.0]]))
    # plain: x+ ((R/Z1) w+) + x- ((R/Z2) w-) = (1*(3+4), -2*(1.5*-1 + 0)) = (7, 3): sums 10 = 2*3 + 4
    torch.testing.assert_close(linear_relevance(x, w, r, "plain"), torch.tensor([[7.0, 3.0]]))


def test_add_rule_by_hand():
    a, b = torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    r = torch.tensor([[2.0, 4.0]])
    ra, rb = add_relevance(a, b, r, "plain")
    torch.testing.assert_close(ra, torch.tensor([[1.5, 2.0]]))
    torch.testing.assert_close(rb, torch.tensor([[0.5, 2.0]]))
    # conservative with opposite signs: the shares follow |sum|, the total stays sum(R) = 6
    a, b = torch.tensor([[2.0, 2.0]]), torch.tensor([[-1.0, -1.0]])
    ra, rb = add_relevance(a, b, r, "conservative")
    # z-rule: a R/(a+b) = (4, 8) (sum 12), b R/(a+b) = (-2, -4) (sum -6); shares 12/18*6 = 4 and 6/18*6 = 2
    torch.testing.assert_close(ra, torch.tensor([[4.0, 8.0]]) * 4 / 12)
    torch.testing.assert_close(rb, torch.tensor([[-2.0, -4.0]]) * 2 / -6)
    torch.testing.assert_close(ra.sum() + rb.sum(), r.sum())


def test_matmul_and_copy_rules_conserve():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 4, 5, generator=gen) + 0.1, torch.rand(2, 5, 3, generator=gen) + 0.1
    r = torch.rand(2, 4, 3, generator=gen)
    ra, rb = matmul_relevance(a, b, r)
    torch.testing.assert_close(ra.sum(dim=(1, 2)), r.sum(dim=(1, 2)) / 2)
    torch.testing.assert_close(rb.sum(dim=(1, 2)), r.sum(dim=(1, 2)) / 2)
    x = torch.tensor([1.0, 0.0, -2.0])
    torch.testing.assert_close(copy_relevance(x, torch.ones(3), torch.full((3,), 2.0)), torch.tensor([3.0, 0.0, 3.0]))


def test_patch_embedding_z_b_rule_conserves():
    # z^B is conservative up to the 1e-9 stabiliser: each token's relevance lands on its own patch.
    gen = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, 8, 8, generator=gen)
    weight = torch.randn(5, 3, 4, 4, generator=gen)
    relevance = torch.rand(2, 4, 5, generator=gen)
    per_patch = patch_embedding_relevance(pixels, weight, (4, 4), relevance)
    torch.testing.assert_close(per_patch, relevance.sum(-1), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- on a tiny ViT


def test_traced_forward_matches_the_model(tiny_vit):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    pixels = (x - tiny_vit.mean) / tiny_vit.std
    with torch.no_grad():
        torch.testing.assert_close(_forward(tiny_vit.vit, pixels).logits, tiny_vit.vit(pixels), rtol=1e-5, atol=1e-5)


def test_conservative_rules_conserve_relevance_through_every_block(tiny_vit):
    """Chefer et al.'s rules keep the total relevance: 1 (the one-hot target) at every block input."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        trace = _forward(tiny_vit.vit, (x - tiny_vit.mean) / tiny_vit.std)
        target = torch.tensor([1, 7])
        for down_to in range(tiny_vit.depth - 1, -1, -1):
            relevance, _ = relevance_pass(tiny_vit.vit, trace, target, "conservative", down_to=down_to)
            torch.testing.assert_close(relevance.sum(dim=(1, 2)), torch.ones(2), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", LRP_METHODS)
def test_explain_runs_the_lrp_methods(tiny_vit, method):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        exp = explain(tiny_vit, x, method=method)
    assert exp.attention.shape == (2, tiny_vit.num_patches)
    torch.testing.assert_close(exp.attention.sum(-1), torch.ones(2))
    with torch.no_grad():
        torch.testing.assert_close(exp.logits, tiny_vit(x), rtol=1e-5, atol=1e-5)
    # explain's map is the relevance clamped at 0 and renormalised
    with torch.enable_grad():
        _, raw, _ = lrp_patch_relevance(tiny_vit.vit, (x - tiny_vit.mean) / tiny_vit.std, method)
    raw = raw.detach().clamp(min=0)
    torch.testing.assert_close(exp.attention, raw / raw.sum(-1, keepdim=True))
    assert needs_gradients(method) == (method == "transformer_attribution")
    assert float32_only(method)  # LRP is never run in bfloat16 by "auto"
    assert resolve_precision("auto", "cpu", float32_only=float32_only(method)) == "float32"


def test_lrp_explanations_are_differentiable(tiny_vit):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    for method in LRP_METHODS:
        exp = explain(tiny_vit, x, method=method, differentiable=True)
        (grad,) = torch.autograd.grad(exp.attention[0, :4].sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, method


def test_lrp_refuses_a_model_it_does_not_cover(tiny_vit):
    import copy

    vit = copy.deepcopy(tiny_vit.vit)
    vit.global_pool = "avg"
    with pytest.raises(ValueError, match="global_pool='token'"):
        lrp_patch_relevance(vit, torch.zeros(1, 3, 32, 32), "lrp")


# ------------------------------------------------------------------------- the reference


def test_matches_chefer_reference_on_the_shipped_classifier():
    """Reference outputs of hila-chefer/Transformer-Explainability on the shipped weights, both in
    float64 (scripts/compare_lrp_reference.py --dtype float64 wrote the fixture; docs/EXPLANATIONS.md).

    Why float64: the LRP rules divide by activations, which amplifies float32 rounding (the
    reference's own float32 and float64 full-LRP maps differ by up to 1.9% of their largest
    value on these images), so two float32 runs agree only where they round alike; an Intel Xeon
    with AMX differed by 3.7e-4. In float64 rounding stays near 1e-15 whichever kernels the CPU
    has: 1e-10 of the largest relevance leaves five orders of magnitude of margin."""
    from fvit_core.models import load_classifier

    ref = np.load(FIXTURE)
    assert str(ref["dtype"]) == "float64"
    clf = load_classifier(SHIPPED)
    vit = clf.vit.double()
    images = torch.from_numpy(ref["pixels"]).double()
    pixels = (images - clf.mean.double()) / clf.std.double()
    for method in LRP_METHODS:
        with torch.enable_grad():
            _, ours, target = lrp_patch_relevance(vit, pixels, method)
        assert target.tolist() == ref["target"].tolist()
        assert ours.dtype == torch.float64  # the rules run in the model's precision when it is wider than float32
        ours_np, theirs = ours.detach().numpy(), ref[method]
        assert theirs.shape == ours_np.shape == (len(images), 64)
        for row_ours, row_ref in zip(ours_np, theirs):
            assert np.abs(row_ours - row_ref).max() <= 1e-10 * np.abs(row_ref).max(), method
            assert spearmanr(row_ours, row_ref).statistic > 1 - 1e-12, method


def test_any_timm_vit_registers_no_embed_class_layer_scale():
    """The grid and the prefix tokens come from the model: 4 register tokens, position codes on the
    patches only, LayerScale; forward matches, relevance is conserved, every method gives P values."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                            depth=2, reg_tokens=4, no_embed_class=True, init_values=0.1).eval()
    for block in vit.blocks:
        block.attn.fused_attn = False
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(_forward(vit, x).logits, vit(x))
        relevance, _ = relevance_pass(vit, _forward(vit, x), torch.tensor([0, 3]), "conservative")
    torch.testing.assert_close(relevance.sum(dim=(1, 2)), torch.ones(2), rtol=0, atol=5e-3)
    for method in LRP_METHODS:
        with torch.enable_grad():
            _, weights, _ = lrp_patch_relevance(vit, x, method)
        assert weights.shape == (2, 16) and torch.isfinite(weights).all()
