"""The Faithful ViT as one object: its runtime strategies, Cohen's PREDICT / CERTIFY, the EOT logits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import beta as beta_dist
from scipy.stats import norm

from fvit_core.method.certify import ABSTAIN
from fvit_core.method.denoise import one_shot_denoise
from fvit_core.method.faithful_vit import FaithfulViT
from helpers import smooth
from fvit_core.runtime.strategy import REFERENCE_RUNTIME, Runtime


def _images(n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["dds", "rs", "multistep", "denoise-only"])
def test_workers_and_batch_cut_give_the_reference_loop_numbers(tiny_pair, two_threads, mode):
    """Worker pool and batch cut are speed only: same draws, same votes, maps within rounding.
    (multistep draws its step noise between the batches' draws, so its numbers depend on the
    cut: it is compared at the same batch size.)"""
    x = _images(3)
    fast = FaithfulViT.from_pair(tiny_pair, 0.25, mode=mode, runtime=Runtime(precision="float32", batch_size=7))
    reference_runtime = dataclasses.replace(REFERENCE_RUNTIME, batch_size=7 if mode == "multistep" else 256)
    reference = FaithfulViT.from_pair(tiny_pair, 0.25, mode=mode, runtime=reference_runtime)
    a = fast.sample(x, 20, keep_samples=True, generator=torch.Generator().manual_seed(1))
    b = reference.sample(x, 20, keep_samples=True, generator=torch.Generator().manual_seed(1))
    sequential = mode == "multistep"
    assert fast.runtime.workers(fast.device, sequential=sequential) == (1 if sequential else 2)
    assert reference.runtime.workers(reference.device, sequential=sequential) == 1
    for u, v in zip(a, b):
        assert np.array_equal(u.votes, v.votes) and u.n_samples == v.n_samples
        np.testing.assert_allclose(u.samples_attention, v.samples_attention, atol=1e-6)
        np.testing.assert_allclose(u.probs, v.probs, atol=1e-6)


def test_one_draw_is_the_paper_formula(tiny_pair):
    """sample() on one draw equals ViT(one_shot_denoise(x + sigma * eps, t*)) computed by hand."""
    x = _images(1, seed=3)
    fvit = FaithfulViT.from_pair(tiny_pair, 0.25, runtime=REFERENCE_RUNTIME)
    out = fvit.sample(x, 1, generator=torch.Generator().manual_seed(9), scheme="independent")[0]
    eps = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        probs = torch.softmax(tiny_pair.classifier(one_shot_denoise(tiny_pair.denoiser, x + 0.25 * eps, fvit.t_star)), -1)
    np.testing.assert_allclose(out.probs, probs[0].double().numpy(), atol=1e-6)
    assert out.votes.sum() == 1 and out.votes[int(probs.argmax())] == 1


def test_certify_is_cohens_certify_on_the_selection_and_estimation_votes(tiny_pair):
    x = _images(1, seed=5)[0]
    fvit = FaithfulViT.from_pair(tiny_pair, 0.5)
    prediction, radius, estimate = fvit.certify(x, 16, 64, 0.05, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    selection = fvit.explain(x, 16, generator=g, scheme="independent").votes  # CERTIFY draws independently
    votes = fvit.explain(x, 64, generator=g, scheme="independent").votes
    assert np.array_equal(votes, estimate.votes) and estimate.n_samples == 64
    guess = int(np.argmax(selection))
    p_lower = beta_dist.ppf(0.05, votes[guess], 64 - votes[guess] + 1)  # one-sided Clopper-Pearson
    if p_lower < 0.5:
        assert prediction == ABSTAIN and radius == 0.0
    else:
        assert prediction == guess and radius == pytest.approx(0.5 * norm.ppf(p_lower), rel=1e-9)


def test_certify_certifies_a_constant_classifier_and_predict_abstains_on_two_draws(tiny_pair):
    vit = tiny_pair.classifier
    x = _images(1, seed=1)[0]
    fvit = FaithfulViT.from_pair(tiny_pair, 0.25)
    # Two draws can never pass a binomial test at level 0.001: PREDICT abstains.
    assert fvit.predict(x, 2, 0.001, generator=torch.Generator().manual_seed(0)) == ABSTAIN
    with torch.no_grad():
        bias = vit.vit.head.bias.clone()
        vit.vit.head.bias.add_(torch.nn.functional.one_hot(torch.tensor(3), vit.num_classes) * 1e4)
    try:
        constant = FaithfulViT(vit, tiny_pair.denoiser, 0.25)
        prediction, radius, _ = constant.certify(
            x, 8, 100, 0.001, generator=torch.Generator().manual_seed(0))
        # all 100 votes for class 3: p_A lower = 0.001 ** (1/100); radius = sigma * Phi^-1 of it
        assert prediction == 3
        assert radius == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 100)), rel=1e-9)
        assert constant.predict(x, 100, 0.001, generator=torch.Generator()) == 3
    finally:
        with torch.no_grad():
            vit.vit.head.bias.copy_(bias)


def test_noisy_logits_are_the_models_logits_on_denoised_draws_and_carry_gradients(tiny_pair):
    x = _images(2, seed=4).requires_grad_(True)
    fvit = FaithfulViT.from_pair(tiny_pair, 0.25)
    torch.manual_seed(11)
    logits = fvit.noisy_logits(x, 3)
    assert logits.shape == (6, tiny_pair.classifier.num_classes)
    torch.manual_seed(11)
    noise = 0.25 * torch.randn((3, *x.shape))
    with torch.no_grad():
        expected = tiny_pair.classifier(one_shot_denoise(tiny_pair.denoiser, (x + noise).flatten(0, 1), fvit.t_star))
    torch.testing.assert_close(logits.detach(), expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(logits.sum(), x)  # not .backward(): the shared models keep no .grad
    assert float(grad.abs().sum()) > 0
    assert all(p.grad is None for p in tiny_pair.classifier.parameters())


def test_the_default_runtime_is_the_analysis_default(tiny_pair):
    """One default per setting: the FViT's own runtime is the analysis's ("auto" precision), and
    FaithfulViT.of builds the FViT a config's smoothing settings describe."""
    from fvit_core.analysis.config import AnalysisConfig

    cfg = AnalysisConfig.of(sigma=0.5, mode="rs")
    assert FaithfulViT.from_pair(tiny_pair, 0.25).runtime == cfg.runtime == Runtime(precision="auto")
    built = FaithfulViT.of(tiny_pair, cfg.smoothing, cfg.runtime)
    assert (built.sigma, built.mode, built.t_star) == (0.5, "rs", None)
    x = _images(2)
    a = smooth(tiny_pair, x, sigma=0.25, n_samples=8, batch_size=5, precision="auto", scheme=cfg.sampling.scheme,
               generator=torch.Generator().manual_seed(0))  # the API's default scheme is the analysis's too
    b = FaithfulViT.from_pair(tiny_pair, 0.25, runtime=Runtime(batch_size=5)).sample(
        x, 8, generator=torch.Generator().manual_seed(0))
    for u, v in zip(a, b):
        assert np.array_equal(u.attention, v.attention) and np.array_equal(u.votes, v.votes)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="nope"), "unknown smoothing mode"), (dict(sigma=0.0), r"sigma must be a number in \[0.001, 4\]"),
    (dict(runtime="fast"), None),
])
def test_bad_settings_are_refused_when_the_fvit_is_built(tiny_pair, kwargs, message):
    sigma = kwargs.pop("sigma", 0.25)
    if message is None:
        with pytest.raises(ValueError, match="precision"):
            Runtime(precision="float16")
        with pytest.raises(ValueError, match="batch_size"):
            Runtime(batch_size=0)
        return
    with pytest.raises(ValueError, match=message):
        FaithfulViT.from_pair(tiny_pair, sigma, **kwargs)
    with pytest.raises(ValueError, match="needs a denoiser"):
        FaithfulViT(tiny_pair.classifier, None, 0.25, mode="dds")
    with pytest.raises(ValueError, match="take one image"):
        FaithfulViT.from_pair(tiny_pair, 0.25).explain(_images(2), 4)


def test_model_cache_is_a_per_model_lru_forgotten_with_the_model():
    import gc

    from fvit_core.runtime.cache import ModelCache

    cache: ModelCache[int] = ModelCache(2)
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    cache.put(a, "x", 1)
    cache.put(a, "y", 2)
    assert cache.get(a, "x") == 1  # x is now the most recently used
    cache.put(a, "z", 3)  # evicts y
    assert cache.get(a, "y") is None and cache.get(a, "x") == 1 and cache.get(a, "z") == 3
    assert cache.get(b, "x") is None  # per model
    cache.put(b, "x", 4)
    del a
    gc.collect()
    assert len(cache._per_model) == 1 and cache.get(b, "x") == 4
    cache.clear()
    assert cache.get(b, "x") is None
    with pytest.raises(ValueError, match="at least one"):
        ModelCache(0)
