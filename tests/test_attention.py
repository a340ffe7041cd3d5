"""Attention capture and explanation methods on a tiny random ViT (docs/METHOD.md, section 4)."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch

from fvit_core.explanations.attention import (
    capture_attention,
    explain,
    install_attention_taps,
    layer_head_maps,
    normalise_patch_weights,
    rollout_layer_matrix,
    rollout_matrix,
)
from fvit_core.explanations.settings import EXPLANATION_METHODS, HEAD_FUSIONS

P = 16  # tiny_vit: 32x32 pixels, 8x8 patches


def _pixels(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


# ---------------------------------------------------------------------------------- capture


def test_capture_fires_once_per_block(tiny_vit):
    with torch.no_grad(), capture_attention(tiny_vit) as record:
        tiny_vit(_pixels())
    tokens = P + tiny_vit.num_prefix_tokens
    assert record.n_calls == tiny_vit.depth == 2
    assert [tuple(m.shape) for m in record.layer_maps()] == [(3, 2, tokens, tokens)] * 2
    for attn in record.layer_maps():  # post-softmax: every query row sums to 1
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, tokens))


def test_capture_layers_and_cls_only(tiny_vit):
    with torch.no_grad(), capture_attention(tiny_vit, layers=[-1], cls_only=True) as record:
        tiny_vit(_pixels())
    assert record.n_calls == 2  # every tap fires, only the last block is kept
    assert list(record.maps) == [1]
    assert tuple(record.maps[1].shape) == (3, 2, P + 1)
    with pytest.raises(ValueError, match="out of range"):
        with capture_attention(tiny_vit, layers=[5]):
            pass


def test_capture_records_nothing_outside_its_context(tiny_vit):
    from conftest import make_tiny_vit

    other = make_tiny_vit(seed=3)
    install_attention_taps(other)
    with torch.no_grad():
        with capture_attention(tiny_vit) as record:
            tiny_vit(_pixels())
            other(_pixels())  # another model's taps must not write into this record
        tiny_vit(_pixels())  # after the block: no recorder active, nothing recorded
    assert record.n_calls == 2


def test_capture_ignores_other_threads(tiny_vit):
    started, finished = threading.Event(), threading.Event()

    def other_thread() -> None:
        started.wait()
        with torch.no_grad():
            for _ in range(3):
                tiny_vit(_pixels(seed=7))
        finished.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with torch.no_grad(), capture_attention(tiny_vit) as record:
        started.set()
        finished.wait(timeout=30)
        tiny_vit(_pixels())
    worker.join()
    assert record.n_calls == 2


def test_taps_install_once_and_no_hooks_leak(tiny_vit):
    assert install_attention_taps(tiny_vit) == 2
    installed = _hook_count(tiny_vit)
    assert installed == tiny_vit.depth
    install_attention_taps(tiny_vit)
    x = _pixels(batch=1)
    for method, fusion in itertools.product(EXPLANATION_METHODS, HEAD_FUSIONS):
        explain(tiny_vit, x, method=method, head_fusion=fusion)
    layer_head_maps(tiny_vit, x)
    assert _hook_count(tiny_vit) == installed


# ---------------------------------------------------------------------------------- rollout


@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
def test_rollout_rows_sum_to_one(tiny_vit, fusion):
    with torch.no_grad(), capture_attention(tiny_vit) as record:
        tiny_vit(_pixels())
    maps = record.layer_maps()
    for attn in maps:
        factor = rollout_layer_matrix(attn, fusion)
        torch.testing.assert_close(factor.sum(-1), torch.ones(3, P + 1))
        assert float(factor.min()) >= 0.0
    torch.testing.assert_close(rollout_matrix(maps, fusion).sum(-1), torch.ones(3, P + 1))


def test_rollout_of_one_block_is_its_augmented_attention():
    attn = torch.softmax(torch.randn(1, 2, 3, 3), dim=-1)
    expected = 0.5 * (attn.mean(1) + torch.eye(3))  # mean-fused rows sum to 1, + I sums to 2
    torch.testing.assert_close(rollout_matrix([attn]), expected)


# ---------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method,fusion", list(itertools.product(EXPLANATION_METHODS, HEAD_FUSIONS)))
def test_explanations_are_distributions(tiny_vit, method, fusion):
    x = _pixels()
    result = explain(tiny_vit, x, method=method, head_fusion=fusion)
    assert tuple(result.attention.shape) == (3, P)
    assert result.attention.dtype == torch.float32
    assert float(result.attention.min()) >= 0.0
    torch.testing.assert_close(result.attention.sum(-1), torch.ones(3))
    with torch.no_grad():
        torch.testing.assert_close(result.logits, tiny_vit(x))
    assert not result.attention.requires_grad and not result.logits.requires_grad
    assert torch.equal(result.target, result.logits.argmax(-1))


def test_raw_attention_matches_manual_recomputation(tiny_vit):
    x = _pixels()
    vit = tiny_vit.vit
    with torch.no_grad():
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed((x - tiny_vit.mean) / tiny_vit.std)))
        for block in vit.blocks[:-1]:
            tokens = block(tokens)
        last = vit.blocks[-1]
        hidden = last.norm1(tokens)
        qkv = hidden @ last.attn.qkv.weight.T + last.attn.qkv.bias
        batch, n_tokens, _ = qkv.shape
        q, k, _ = qkv.reshape(batch, n_tokens, 3, 2, 16).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / 16**0.5, dim=-1)
        cls_patches = attn[:, :, 0, 1:].mean(dim=1)
        expected = cls_patches / cls_patches.sum(-1, keepdim=True)
    torch.testing.assert_close(explain(tiny_vit, x, method="raw").attention, expected, rtol=1e-5, atol=1e-6)


def test_layer_head_maps_shape_and_raw_consistency(tiny_vit):
    x = _pixels()
    maps = layer_head_maps(tiny_vit, x)
    assert tuple(maps.shape) == (3, 2, 2, P)
    # Patch columns of a softmax row: below 1 in total, the [CLS] column holds the rest.
    assert bool((maps.sum(-1) < 1).all()) and float(maps.min()) > 0
    for fusion, fuse in (("mean", maps[:, -1].mean(1)), ("max", maps[:, -1].amax(1))):
        torch.testing.assert_close(
            explain(tiny_vit, x, method="raw", head_fusion=fusion).attention, normalise_patch_weights(fuse)
        )


def test_methods_give_different_maps(tiny_vit):
    x = _pixels()
    maps = {m: explain(tiny_vit, x, method=m).attention for m in EXPLANATION_METHODS}
    for a, b in itertools.combinations(EXPLANATION_METHODS, 2):
        assert float((maps[a] - maps[b]).abs().max()) > 1e-3, (a, b)
    fused = {f: explain(tiny_vit, x, method="rollout", head_fusion=f).attention for f in HEAD_FUSIONS}
    assert float((fused["max"] - fused["min"]).abs().max()) > 1e-3


@pytest.mark.parametrize("method", ["grad_rollout", "gradcam"])
def test_gradient_methods_depend_on_target(tiny_vit, method):
    x = _pixels(batch=1)
    first = explain(tiny_vit, x, method=method, target=0).attention
    second = explain(tiny_vit, x, method=method, target=torch.tensor([5])).attention
    assert float((first - second).abs().max()) > 1e-4


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
@pytest.mark.parametrize("method", EXPLANATION_METHODS)
def test_methods_work_under_inference_mode_and_no_grad(tiny_vit, method, mode):
    x = _pixels()
    expected = explain(tiny_vit, x, method=method)
    with mode():
        x_inside = _pixels()  # an inference tensor under inference_mode
        result = explain(tiny_vit, x_inside, method=method, target=expected.target.tolist())
    torch.testing.assert_close(result.attention, expected.attention)
    assert all(p.grad is None for p in tiny_vit.parameters())


def test_deep_copies_keep_their_own_taps(tiny_vit):
    import copy

    install_attention_taps(tiny_vit)
    clone = copy.deepcopy(tiny_vit)
    assert _hook_count(clone) == clone.depth
    with torch.no_grad(), capture_attention(clone) as record:
        tiny_vit(_pixels())  # the original's taps belong to another model
        clone(_pixels())
    assert record.n_calls == clone.depth


@pytest.mark.parametrize("method", EXPLANATION_METHODS)
def test_differentiable_explanations_backpropagate_to_pixels(tiny_vit, method):
    x = _pixels(batch=2).requires_grad_(True)
    result = explain(tiny_vit, x, method=method, differentiable=True)
    torch.testing.assert_close(result.attention.detach(), explain(tiny_vit, x.detach(), method=method).attention)
    (grad,) = torch.autograd.grad(result.attention[:, :4].sum(), x)
    assert float(grad.abs().sum()) > 0
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        explain(tiny_vit, _pixels(), method=method, differentiable=True)


def test_normalise_patch_weights_clamps_and_falls_back_to_uniform():
    weights = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 3.0, 0.0]])
    torch.testing.assert_close(normalise_patch_weights(weights), torch.tensor([[0.25] * 4, [0.0, 0.25, 0.75, 0.0]]))


# ---------------------------------------------------------------------------------- threads


def test_concurrent_explanations_match_sequential(tiny_vit):
    jobs = [(_pixels(batch=2, seed=10), "rollout"), (_pixels(batch=3, seed=11), "raw"),
            (_pixels(batch=2, seed=12), "grad_rollout"), (_pixels(batch=1, seed=13), "gradcam")]
    expected = [explain(tiny_vit, x, method=m) for x, m in jobs]
    for _ in range(5):
        barrier = threading.Barrier(len(jobs))
        results: list = [None] * len(jobs)
        errors: list[BaseException] = []

        def work(index: int) -> None:
            x, method = jobs[index]
            try:
                barrier.wait(timeout=30)
                for _ in range(3):
                    results[index] = explain(tiny_vit, x, method=method)
            except BaseException as exc:  # surfaced by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for got, want in zip(results, expected):
            assert torch.equal(got.attention, want.attention)
            assert torch.equal(got.logits, want.logits)


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,x,match",
    [
        ({"method": "lime"}, None, "choose one of raw, rollout, grad_rollout, gradcam, transformer_attribution, "
                                   "lrp, partial_lrp, attr_rollout"),
        ({"head_fusion": "median"}, None, "choose one of mean, max, min"),
        ({}, torch.rand(3, 32, 32), r"shape \(B, 3, 32, 32\)"),
        ({}, torch.rand(1, 3, 64, 48), r"shape \(B, 3, 32, 32\) or a uniform rescale"),  # 64x64 would be a smoothing space
        ({}, torch.rand(1, 3, 32, 32) * 255, r"\[0, 1\]"),
        ({}, torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        ({}, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
        ({"target": 10}, None, "0..9"),
        ({"target": [1, 2]}, None, "one class per image"),
    ],
)
def test_invalid_inputs_raise_actionable_errors(tiny_vit, kwargs, x, match):
    x = _pixels() if x is None else x
    with pytest.raises(ValueError, match=match):
        explain(tiny_vit, x, **kwargs)


# ------------------------------------------------------------------ fast raw path


@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
def test_fast_raw_path_matches_the_captured_attention(tiny_vit, fusion):
    from fvit_core.explanations.attention import _METHODS, _compute, fuse_heads
    from fvit_core.explanations.raw_path import raw_cls_path, supports_cls_path

    x = _pixels(batch=4)
    assert supports_cls_path(tiny_vit)
    with torch.no_grad():
        logits, cls_attention = raw_cls_path(tiny_vit, x)
        weights = fuse_heads(cls_attention, fusion)[:, tiny_vit.num_prefix_tokens:]
        ref_logits, ref_weights, _ = _compute(tiny_vit, x, _METHODS["raw"], fusion, None, create_graph=False)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normalise_patch_weights(weights), normalise_patch_weights(ref_weights),
                               rtol=1e-5, atol=1e-6)


def test_fast_raw_path_skips_the_capture_and_falls_back_in_training_mode(tiny_vit, monkeypatch):
    import copy

    from fvit_core.explanations import attention
    from fvit_core.explanations.raw_path import supports_cls_path

    expected = explain(tiny_vit, _pixels(), method="raw")
    with monkeypatch.context() as patch:
        patch.setattr(attention, "capture_attention", None)  # the fast path must not need it
        torch.testing.assert_close(explain(tiny_vit, _pixels(), method="raw").attention, expected.attention)
    trained = copy.deepcopy(tiny_vit).train()
    assert not supports_cls_path(trained)
    torch.testing.assert_close(explain(trained, _pixels(), method="raw").attention, expected.attention)
