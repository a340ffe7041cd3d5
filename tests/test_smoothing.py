"""The DDS / RS / denoise-only sample loop: streamed sums equal a direct computation."""

import numpy as np
import pytest
import torch

from fvit_core.explanations.attention import explain
from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma
from helpers import smooth


def _images(n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_dds_matches_a_direct_per_sample_computation(tiny_pair):
    x = _images(1)
    sigma, n = 0.25, 10
    out = smooth(tiny_pair, x, sigma=sigma, n_samples=n, batch_size=3, generator=torch.Generator().manual_seed(5),
                 keep_samples=True)[0]
    g = torch.Generator().manual_seed(5)
    t = timestep_for_sigma(tiny_pair.denoiser.alphas_cumprod, sigma)
    ws, ps = [], []
    with torch.no_grad():
        for _ in range(n):
            noisy = x + torch.randn(x.shape, generator=g) * sigma
            e = explain(tiny_pair.classifier, one_shot_denoise(tiny_pair.denoiser, noisy, t))
            ws.append(e.attention[0].double())
            ps.append(torch.softmax(e.logits[0].double(), -1))
    w, p = torch.stack(ws).mean(0).numpy(), torch.stack(ps).mean(0).numpy()
    np.testing.assert_allclose(out.attention, w / w.sum(), atol=1e-5)
    np.testing.assert_allclose(out.probs, p, atol=1e-5)
    assert out.votes.sum() == n and out.t_star == t == 145
    votes = np.bincount([int(torch.argmax(q)) for q in ps], minlength=10)
    assert np.array_equal(out.votes, votes)
    assert out.samples_attention.shape == (n, 16)
    se = torch.stack(ws).std(0, unbiased=True).numpy() / np.sqrt(n)
    np.testing.assert_allclose(out.attention_se, se, atol=1e-5)


def test_same_seed_same_result_and_batching_does_not_matter(tiny_pair):
    x = _images(2)
    run = lambda bs, seed: smooth(tiny_pair, x, sigma=0.12, n_samples=7, batch_size=bs,  # noqa: E731
                                  generator=torch.Generator().manual_seed(seed))
    a, b, c, d = run(4, 1), run(4, 1), run(5, 1), run(4, 2)
    assert np.array_equal(a[0].attention, b[0].attention) and np.array_equal(a[1].probs, b[1].probs)
    np.testing.assert_allclose(a[1].attention, c[1].attention, atol=1e-6)
    assert not np.allclose(a[0].attention, d[0].attention)


def test_interleaved_images_get_independent_noise(tiny_pair):
    x = _images(1).repeat(2, 1, 1, 1)
    outs = smooth(tiny_pair, x, sigma=0.5, n_samples=8, generator=torch.Generator().manual_seed(0))
    assert not np.allclose(outs[0].attention, outs[1].attention)


def test_shared_noise_gives_identical_estimates_for_identical_images(tiny_pair):
    x = _images(1).repeat(2, 1, 1, 1)
    noise = torch.randn(6, 3, 32, 32) * 0.25
    outs = smooth(tiny_pair, x, sigma=0.25, n_samples=6, noise=noise)
    assert np.allclose(outs[0].attention, outs[1].attention)


def test_denoise_only_is_one_deterministic_pass(tiny_pair):
    x = _images(1)
    a = smooth(tiny_pair, x, sigma=0.25, n_samples=50, mode="denoise-only")[0]
    b = smooth(tiny_pair, x, sigma=0.25, n_samples=50, mode="denoise-only")[0]
    assert a.n_samples == 1 and a.votes.sum() == 1 and np.array_equal(a.attention, b.attention)


def test_rs_needs_no_denoiser_and_inputs_stay_in_range(tiny_pair):
    from fvit_core.models import ModelPair

    pair = ModelPair(classifier=tiny_pair.classifier, denoiser=None)
    out = smooth(pair, _images(1), sigma=0.5, n_samples=6, mode="rs", generator=torch.Generator().manual_seed(0))[0]
    assert out.t_star is None and out.votes.sum() == 6
    assert out.denoised_sample.min() >= 0 and out.denoised_sample.max() <= 1
    with pytest.raises(ValueError, match="needs a denoiser"):
        smooth(pair, _images(1), sigma=0.5, n_samples=2, mode="dds")


@pytest.mark.parametrize("method", ["rollout", "grad_rollout", "gradcam"])
def test_every_explanation_method_smooths(tiny_pair, method):
    with torch.inference_mode():
        out = smooth(tiny_pair, _images(1), sigma=0.25, n_samples=4, method=method,
                     generator=torch.Generator().manual_seed(0))[0]
    assert abs(out.attention.sum() - 1) < 1e-9 and (out.attention >= 0).all()


def test_multistep_mode_runs(tiny_pair):
    out = smooth(tiny_pair, _images(1), sigma=0.25, n_samples=3, mode="multistep", multistep_steps=3,
                 generator=torch.Generator().manual_seed(0))[0]
    assert out.votes.sum() == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"n_samples": 0}, "n_samples"), ({"sigma": -0.1}, "sigma"), ({"mode": "magic"}, "unknown smoothing mode"),
    ({"method": "saliency"}, "unknown explanation method"), ({"head_fusion": "median"}, "head fusion"),
    ({"batch_size": 0}, "batch_size"),
])
def test_invalid_parameters_are_refused(tiny_pair, kwargs, message):
    args = {"sigma": 0.25, "n_samples": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        smooth(tiny_pair, _images(1), **args)


# ------------------------------------------------------------------ precision and early stopping


def test_bfloat16_is_close_to_float32_and_leaves_the_shared_model_alone(tiny_pair):
    from fvit_core.runtime.precision import model_in_precision

    x = _images(2)
    run = lambda precision: smooth(tiny_pair, x, sigma=0.25, n_samples=8, precision=precision,  # noqa: E731
                                   generator=torch.Generator().manual_seed(0))
    full, half = run("float32"), run("bfloat16")
    for a, b in zip(full, half):
        assert a.label == b.label
        np.testing.assert_allclose(b.probs, a.probs, atol=0.03)
        np.testing.assert_allclose(b.attention, a.attention, atol=0.03)
        assert abs(b.attention.sum() - 1) < 1e-9 and b.attention.dtype == np.float64
    assert all(p.dtype == torch.float32 for p in tiny_pair.classifier.parameters())
    assert all(p.dtype == torch.float32 for p in tiny_pair.denoiser.unet.parameters())
    copy = model_in_precision(tiny_pair.classifier, torch.bfloat16)
    assert copy is model_in_precision(tiny_pair.classifier, torch.bfloat16)  # made once
    assert model_in_precision(tiny_pair.classifier, torch.float32) is tiny_pair.classifier
    with pytest.raises(ValueError, match="precision"):
        smooth(tiny_pair, x, sigma=0.25, n_samples=2, precision="float16")


def test_bfloat16_copy_follows_weight_changes():
    from conftest import make_tiny_vit
    from fvit_core.runtime.precision import model_in_precision

    model = make_tiny_vit(seed=1)
    first = model_in_precision(model, torch.bfloat16)
    with torch.no_grad():
        model.vit.head.bias.add_(1.0)  # in-place training step
    second = model_in_precision(model, torch.bfloat16)
    assert second is not first
    torch.testing.assert_close(second.vit.head.bias.float(), model.vit.head.bias, atol=1e-2, rtol=1e-2)


def test_settled_rule_on_hand_made_estimates():
    from fvit_core.method.monte_carlo import settled

    w = np.array([0.4, 0.3, 0.2, 0.1])
    p = np.array([0.7, 0.2, 0.1])
    small, large = np.full(4, 0.001), np.full(4, 0.04)
    assert settled(w, small, p, np.full(3, 0.001), k=2, z=2.0)
    assert not settled(w, large, p, np.full(3, 0.001), k=2, z=2.0)  # 0.3 - 0.2 < 2 * 0.08
    assert not settled(w, small, p, np.full(3, 0.2), k=2, z=2.0)  # label not settled
    assert settled(w, large, p, np.full(3, 0.001), k=4, z=2.0)  # k = P: nothing to order


def test_early_stop_rule_bound():
    from statistics import NormalDist

    from fvit_core.method.monte_carlo import EarlyStop

    rule = EarlyStop(k=8, alpha=0.05, check_every=16, min_samples=32)
    assert rule.checkpoints(64) == [32, 48]
    assert rule.z(64) == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / 2))
    assert rule.checkpoints(32) == [] and rule.z(32) == pytest.approx(NormalDist().inv_cdf(0.95))
    with pytest.raises(ValueError, match="alpha"):
        EarlyStop(k=8, alpha=0.0)
    with pytest.raises(ValueError, match="check_every"):
        EarlyStop(k=8, check_every=0)


def test_early_stop_stops_all_images_together_and_equals_a_shorter_run(tiny_pair):
    from fvit_core.method.monte_carlo import EarlyStop

    x = _images(1)
    rule = EarlyStop(k=2, alpha=0.05, check_every=8, min_samples=8)
    # sigma this small leaves almost no Monte Carlo spread: settled at the first check.
    out = smooth(tiny_pair, x, sigma=0.002, n_samples=64, early_stop=rule, keep_samples=True,
                 generator=torch.Generator().manual_seed(3))[0]
    assert out.stopped_early and out.n_samples == 8 and out.votes.sum() == 8
    assert out.samples_attention.shape == (8, 16)
    short = smooth(tiny_pair, x, sigma=0.002, n_samples=8, generator=torch.Generator().manual_seed(3))[0]
    np.testing.assert_array_equal(out.attention, short.attention)
    both = smooth(tiny_pair, _images(2), sigma=0.002, n_samples=64, early_stop=rule,
                  generator=torch.Generator().manual_seed(3))
    assert both[0].n_samples == both[1].n_samples < 64


def test_early_stop_runs_the_full_budget_when_not_settled(tiny_pair):
    from fvit_core.method.monte_carlo import EarlyStop

    rule = EarlyStop(k=8, alpha=1e-9, check_every=4, min_samples=4)
    out = smooth(tiny_pair, _images(1), sigma=0.5, n_samples=12, early_stop=rule,
                 generator=torch.Generator().manual_seed(0))[0]
    assert not out.stopped_early and out.n_samples == 12 and out.votes.sum() == 12


def test_memory_does_not_keep_per_sample_maps_unless_asked(tiny_pair):
    out = smooth(tiny_pair, _images(1), sigma=0.25, n_samples=5, generator=torch.Generator().manual_seed(0))[0]
    assert out.samples_attention is None


# ------------------------------------------------------------------ CPU workers


def test_workers_give_the_sequential_numbers(tiny_pair, two_threads):
    from fvit_core.runtime.strategy import Runtime

    x = _images(3)
    cpu = torch.device("cpu")
    assert Runtime().workers(cpu) == 2 and Runtime().workers(cpu, sequential=True) == 1
    assert Runtime(parallel=False).workers(cpu) == 1
    pooled = smooth(tiny_pair, x, sigma=0.25, n_samples=10, batch_size=4, keep_samples=True,
                    generator=torch.Generator().manual_seed(4))
    torch.set_num_threads(1)
    alone = smooth(tiny_pair, x, sigma=0.25, n_samples=10, batch_size=4, keep_samples=True,
                   generator=torch.Generator().manual_seed(4))
    for a, b in zip(pooled, alone):
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-6)
        np.testing.assert_allclose(a.samples_attention, b.samples_attention, atol=1e-6)
        assert np.array_equal(a.votes, b.votes)
        np.testing.assert_allclose(a.denoised_sample, b.denoised_sample, atol=1e-6)


def test_workers_run_single_threaded_and_leave_the_thread_default_alone(tiny_pair, two_threads):
    import threading

    from fvit_core.runtime.workers import submit_single_threaded, worker_pool

    smooth(tiny_pair, _images(1), sigma=0.25, n_samples=4, generator=torch.Generator().manual_seed(0))
    assert worker_pool(2).submit(torch.get_num_threads).result() == 1
    assert submit_single_threaded(torch.get_num_threads).result() == 1
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [2] and torch.get_num_threads() == 2  # threads started later keep the default


def test_cpu_batches_are_even_and_independent_of_the_thread_count():
    from fvit_core.runtime.strategy import Runtime

    cpu, gpu, bf16, f32 = torch.device("cpu"), torch.device("meta"), torch.bfloat16, torch.float32

    def sizes(runtime, *args):
        return [len(i) for i, _ in runtime.forward_batches(*args)]

    assert sizes(Runtime(batch_size=256), 3, 0, 64, cpu, bf16) == [96, 96]
    assert sizes(Runtime(batch_size=256), 3, 0, 64, cpu, f32) == [48] * 4
    assert sizes(Runtime(batch_size=32), 3, 0, 64, cpu, f32) == [32] * 6  # the caller's cap wins when smaller
    assert sizes(Runtime(batch_size=256), 1, 0, 1, cpu, f32) == [1]
    assert sizes(Runtime(batch_size=256), 3, 0, 256, gpu, f32) == [256] * 3  # GPU: the caller's batch size
    cut = [(a.tolist(), b.tolist()) for a, b in Runtime(batch_size=4).forward_batches(2, 5, 3, cpu, f32)]
    assert cut == [([0, 0, 0], [5, 6, 7]), ([1, 1, 1], [5, 6, 7])]  # samples 5..7 of images 0 and 1


# ------------------------------------------------------------------ precision "auto"


def test_auto_precision_is_bfloat16_only_where_native_and_forward_only(monkeypatch):
    from fvit_core.explanations.settings import float32_only
    from fvit_core.runtime import precision as smoothing
    from fvit_core.runtime.precision import resolve_precision

    def resolve(precision: str, method: str) -> str:
        return resolve_precision(precision, "cpu", float32_only=float32_only(method))

    for native in (True, False):
        monkeypatch.setattr(smoothing, "native_bfloat16", lambda device, native=native: native)
        expected = "bfloat16" if native else "float32"
        assert resolve("auto", "raw") == expected
        assert resolve("auto", "rollout") == expected
        assert resolve("auto", "grad_rollout") == "float32"  # gradients: not measured in bf16
        assert resolve("auto", "gradcam") == "float32"
        assert resolve("float32", "raw") == "float32"
        assert resolve("bfloat16", "gradcam") == "bfloat16"  # an explicit choice is kept
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float16", "cpu")
    assert smoothing.native_bfloat16(torch.device("meta")) is False


def test_auto_precision_runs_what_it_resolves_to(tiny_pair, monkeypatch):
    from fvit_core.runtime import precision as smoothing

    x = _images(2)
    monkeypatch.setattr(smoothing, "native_bfloat16", lambda device: True)
    auto = smooth(tiny_pair, x, sigma=0.25, n_samples=6, precision="auto", generator=torch.Generator().manual_seed(3))
    half = smooth(tiny_pair, x, sigma=0.25, n_samples=6, precision="bfloat16",
                  generator=torch.Generator().manual_seed(3))
    full = smooth(tiny_pair, x, sigma=0.25, n_samples=6, precision="float32",
                  generator=torch.Generator().manual_seed(3))
    for a, h, f in zip(auto, half, full):
        np.testing.assert_array_equal(a.attention, h.attention)
        assert not np.array_equal(a.attention, f.attention)  # bfloat16 really ran
