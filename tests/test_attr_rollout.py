"""Attribution Rollout (fvit_core/explanations/attribution_rollout.py): hand-checked rollout factors, the exit
logits and their gradients, class and batch behaviour, and agreement with the authors' implementation
(yxheartipp/attr-rollout; outputs committed as a fixture, scripts/attr_rollout_reference.py wrote it)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from fvit_core.explanations.attention import capture_attention, explain, fuse_heads
from fvit_core.explanations.attribution_rollout import (
    IG_WEIGHT,
    attention_attribution,
    attribution_rollout_matrix,
    block_exit_logits,
    exit_gradients,
)
from fvit_core.explanations.settings import (CLASS_METHODS, GRADIENT_METHODS, SIGNED_METHODS, float32_only,
                                             needs_gradients)
from seeded_vit import make_seeded_vit, weight_checksum

FIXTURE = Path(__file__).parent / "fixtures" / "attr_rollout_reference.npz"


def _pixels(batch: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _signed(model, inputs: torch.Tensor, head_fusion: str, target: torch.Tensor | None = None):
    """Our (B, P) values before the clamp, composed from the module's functions as explain() does."""
    with torch.enable_grad(), capture_attention(model, keep_grad=True) as record:
        exits = block_exit_logits(model.vit, inputs.clone().requires_grad_(True))
    chosen = exits[-1].detach().argmax(dim=-1) if target is None else target
    maps = record.layer_maps()
    grads = exit_gradients(exits, maps, chosen)
    fused = [fuse_heads(attention_attribution(a, g), head_fusion) for a, g in zip(maps, grads)]
    return attribution_rollout_matrix(fused)[:, 0, model.num_prefix_tokens:].detach(), chosen


# ------------------------------------------------------------------------- hand-checked pieces


def test_ig_weight_is_the_authors_riemann_sum():
    # generate_ig: sum over alpha in linspace(0, 1, 20) of grad * alpha, times scale = 1/m = 1/20
    assert IG_WEIGHT == pytest.approx(np.linspace(0, 1, 20).sum() / 20, abs=1e-15) == 0.5


def test_rollout_factors_by_hand():
    # S1 + I = [[1.5, -0.25], [0, 2]]: row sums 1.25 and 2 -> W1 = [[1.2, -0.2], [0, 1]]
    s1 = torch.tensor([[[0.5, -0.25], [0.0, 1.0]]], dtype=torch.float64)
    torch.testing.assert_close(attribution_rollout_matrix([s1]), torch.tensor([[[1.2, -0.2], [0.0, 1.0]]],
                                                                               dtype=torch.float64))
    # S2 + I = [[1, 1], [1, 3]] -> W2 = [[0.5, 0.5], [0.25, 0.75]]; R = W2 W1 (later blocks on the left)
    s2 = torch.tensor([[[0.0, 1.0], [1.0, 2.0]]], dtype=torch.float64)
    expected = torch.tensor([[[0.6, 0.4], [0.3, 0.7]]], dtype=torch.float64)
    torch.testing.assert_close(attribution_rollout_matrix([s1, s2]), expected)
    assert not torch.allclose(attribution_rollout_matrix([s2, s1]), expected)  # order matters
    # A row summing to exactly 0 is left undivided instead of becoming inf / NaN.
    zero_row = torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(attribution_rollout_matrix([zero_row]), torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))


def test_exit_logits_are_the_truncated_models(tiny_vit):
    inputs = tiny_vit.input_layer(_pixels())
    with torch.no_grad():
        exits = block_exit_logits(tiny_vit.vit, inputs)
        assert len(exits) == tiny_vit.depth == 2
        torch.testing.assert_close(exits[-1], tiny_vit.vit(inputs))
        first_block_only = copy.deepcopy(tiny_vit.vit)
        first_block_only.blocks = first_block_only.blocks[:1]
        torch.testing.assert_close(exits[0], first_block_only(inputs))
        assert float((exits[0] - exits[1]).abs().max()) > 1e-2


def test_each_block_is_differentiated_against_its_own_exit(tiny_vit):
    inputs = tiny_vit.input_layer(_pixels())
    with capture_attention(tiny_vit, keep_grad=True) as record:
        exits = block_exit_logits(tiny_vit.vit, inputs.requires_grad_(True))
    maps, target = record.layer_maps(), exits[-1].detach().argmax(-1)
    ours = exit_gradients(exits, maps, target)
    final = torch.autograd.grad(exits[-1].gather(1, target[:, None]).sum(), maps, retain_graph=True)
    torch.testing.assert_close(ours[-1], final[-1])  # the last exit is the model's logit
    assert float((ours[0] - final[0]).abs().max()) > 1e-3  # grad_rollout would use final[0]
    exit0 = torch.autograd.grad(exits[0].gather(1, target[:, None]).sum(), maps[0])[0]
    torch.testing.assert_close(ours[0], exit0)


def test_one_block_model_by_hand(tiny_vit):
    """With one block the exit is the final logit: the [CLS] row of (S + I) / rowsum(S + I),
    S = max over heads of A * dy/dA / 2, from a plain forward and backward pass of the model."""
    model = copy.deepcopy(tiny_vit)
    model.vit.blocks = model.vit.blocks[:1]
    x = _pixels()
    with capture_attention(model, keep_grad=True) as record:
        logits = model(x.clone().requires_grad_(True))
    target = logits.detach().argmax(-1)
    (attn,) = record.layer_maps()
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attn)
    s = (attn * grad).amax(dim=1) / 2
    cls_row = s[:, 0, :]
    expected = cls_row[:, 1:] / (1 + cls_row.sum(-1, keepdim=True))
    ours, chosen = _signed(model, model.input_layer(x), "max")
    assert torch.equal(chosen, target)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-7)
    result = explain(model, x, method="attr_rollout", head_fusion="max")
    torch.testing.assert_close(result.relevance, expected / expected.abs().sum(-1, keepdim=True), rtol=1e-5,
                               atol=1e-7)


# ------------------------------------------------------------------------- as an explanation method


def test_registered_as_a_signed_class_dependent_gradient_method():
    assert "attr_rollout" in GRADIENT_METHODS and "attr_rollout" in CLASS_METHODS and "attr_rollout" in SIGNED_METHODS
    assert needs_gradients("attr_rollout") and float32_only("attr_rollout")


def test_depends_on_target_and_defaults_to_the_prediction(tiny_vit):
    x = _pixels(batch=2)
    default = explain(tiny_vit, x, method="attr_rollout")
    predicted = explain(tiny_vit, x, method="attr_rollout", target=default.target.tolist())
    assert torch.equal(default.attention, predicted.attention)
    first = explain(tiny_vit, x, method="attr_rollout", target=0)
    second = explain(tiny_vit, x, method="attr_rollout", target=5)
    assert first.target.tolist() == [0, 0] and second.target.tolist() == [5, 5]
    assert float((first.attention - second.attention).abs().max()) > 1e-3


def test_batch_equals_one_image_at_a_time():
    model = make_seeded_vit(0)
    x = _pixels(batch=4, size=16, seed=3)
    targets = [3, 0, 9, 3]
    batch = explain(model, x, method="attr_rollout", head_fusion="max", target=targets)
    for index, target in enumerate(targets):
        single = explain(model, x[index:index + 1], method="attr_rollout", head_fusion="max", target=target)
        torch.testing.assert_close(batch.attention[index:index + 1], single.attention, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(batch.relevance[index:index + 1], single.relevance, rtol=1e-5, atol=1e-7)


def test_signed_map_and_its_clamp(tiny_vit):
    result = explain(tiny_vit, _pixels(), method="attr_rollout")  # mean fusion: negative values occur here
    relevance, attention = result.relevance, result.attention
    assert relevance is not None and bool((relevance < 0).any())
    torch.testing.assert_close(relevance.abs().sum(-1), torch.ones(3))
    assert bool((attention[relevance < 0] == 0).all())
    positive = relevance.clamp(min=0)
    torch.testing.assert_close(attention, positive / positive.sum(-1, keepdim=True))


# ------------------------------------------------------------------------- the reference


def test_matches_the_authors_reference():
    """Outputs of yxheartipp/attr-rollout (IG.generate_ig + generate_visualizations'
    compute_rollout_attention, commit 588c823) on tests/seeded_vit.py's model in float64, written by
    scripts/attr_rollout_reference.py (docs/EXPLANATIONS.md). The authors fuse heads by the maximum.
    In float64 the two agree to 2e-16 (rounding); 1e-10 of the largest value leaves ample margin."""
    ref = np.load(FIXTURE)
    assert str(ref["dtype"]) == "float64"
    model = make_seeded_vit(int(ref["seed"]))
    # A different checksum means the seeded weights changed (tests/seeded_vit.py or torch's RNG), not the method.
    assert weight_checksum(model) == pytest.approx(float(ref["weight_checksum"]), rel=1e-12)
    model = model.double()
    pixels = torch.from_numpy(ref["pixels"]).double() / 255
    theirs = ref["attr_rollout"]
    ours, target = _signed(model, model.input_layer(pixels), "max")
    assert target.tolist() == ref["target"].tolist()
    assert ours.dtype == torch.float64 and ours.shape == theirs.shape == (3, 16)
    for row_ours, row_ref in zip(ours.numpy(), theirs):
        assert np.abs(row_ours - row_ref).max() <= 1e-10 * np.abs(row_ref).max()
    # The public API: the signed map scaled to sum |r| = 1, and the clamped, renormalised weights.
    result = explain(model, pixels, method="attr_rollout", head_fusion="max")
    np.testing.assert_allclose(result.relevance.numpy(), theirs / np.abs(theirs).sum(-1, keepdims=True),
                               rtol=0, atol=1e-12)
    clamped = np.clip(theirs, 0, None)
    np.testing.assert_allclose(result.attention.numpy(), clamped / clamped.sum(-1, keepdims=True), rtol=0, atol=1e-12)
    # Mean fusion (fvit's default) is a different map: the reference pins the fusion.
    mean_fused, _ = _signed(model, model.input_layer(pixels), "mean")
    assert np.abs(mean_fused.numpy() - theirs).max() > 1e-3
