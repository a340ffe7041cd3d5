"""Antithetic sampling (method.settings.SAMPLING_SCHEMES): pairs of noise draws e, -e; their pair
means are the independent units of the standard errors, the bootstraps and the noise floor, and
Cohen's bounds count one draw of each pair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.noise_floor import NoiseFloorSettings, noise_floor_estimate
from fvit_core.analysis.pipeline import analyze
from fvit_core.errors import SettingError
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.method.monte_carlo import MonteCarloSums, SmoothedOutput, standard_error
from fvit_core.method.settings import SamplingSettings
from fvit_core.runtime.sampling import sample_loop, scheme_normals
from fvit_core.runtime.strategy import Runtime


def _loop_noise(batch_size: int, looks=(), n_images: int = 3, n_samples: int = 12, antithetic: bool = True):
    drawn: dict[tuple[int, int], torch.Tensor] = {}

    def keep(job) -> int:
        for row in range(len(job.image_idx)):
            drawn[(int(job.image_idx[row]), int(job.sample_idx[row]))] = job.normal[row].clone()
        return len(job.image_idx)

    sample_loop(lambda job: job, keep, runtime=Runtime(batch_size=batch_size, parallel=False), n_images=n_images,
                n_samples=n_samples, shape=(3, 2, 2), device=torch.device("cpu"), dtype=torch.float32,
                generator=torch.Generator().manual_seed(0), draw_noise=True, workers=1, looks=looks,
                antithetic=antithetic)
    return drawn


@pytest.mark.parametrize("batch_size, looks", [(64, ()), (5, ()), (7, (5,)), (3, (4, 8))])
def test_every_odd_draw_is_the_negated_even_draw_whatever_the_batches(batch_size, looks):
    """Pairs cut by a batch boundary or an early-stop look are completed with the same noise."""
    drawn = _loop_noise(batch_size, looks)
    assert len(drawn) == 3 * 12
    for image in range(3):
        for pair in range(6):
            assert torch.equal(drawn[(image, 2 * pair + 1)], -drawn[(image, 2 * pair)])
        fresh = torch.stack([drawn[(image, 2 * pair)] for pair in range(6)])
        assert torch.unique(fresh.flatten()).numel() == fresh.numel()  # the pairs are not copies of each other
    plain = _loop_noise(64, antithetic=False)
    assert not torch.equal(plain[(0, 1)], -plain[(0, 0)])


def test_shared_noise_comes_in_the_same_pairs():
    normals = scheme_normals(8, (3, 4, 4), torch.Generator().manual_seed(1), antithetic=True)
    assert torch.equal(normals[1::2], -normals[0::2])
    plain = scheme_normals(8, (3, 4, 4), torch.Generator().manual_seed(1), antithetic=False)
    assert torch.equal(plain, torch.randn((8, 3, 4, 4), generator=torch.Generator().manual_seed(1)))


def _sums_of(values: np.ndarray, probs: np.ndarray, antithetic: bool, batch: int) -> MonteCarloSums:
    """MonteCarloSums of one image fed in batches of ``batch`` rows."""
    n = len(values)
    sums = MonteCarloSums(1, values.shape[1], probs.shape[1], keep=True, antithetic=antithetic)
    for start in range(0, n, batch):
        rows = np.arange(start, min(start + batch, n))
        sums.add(np.zeros(len(rows), dtype=np.int64), values[rows], probs[rows], {}, None, rows)
    return sums


@pytest.mark.parametrize("batch", [16, 3])
def test_standard_errors_are_those_of_the_pair_means(batch):
    rng = np.random.default_rng(0)
    w = rng.random((16, 5))
    p = rng.dirichlet(np.ones(4), 16)
    sums = _sums_of(w, p, True, batch)
    mean, se, p_mean, p_se = sums.mean_se(16)
    pairs = (w[0::2] + w[1::2]) / 2
    np.testing.assert_allclose(mean[0], w.mean(0))
    np.testing.assert_allclose(se[0], pairs.std(0, ddof=1) / np.sqrt(8), rtol=1e-12)
    np.testing.assert_allclose(p_se[0], ((p[0::2] + p[1::2]) / 2).std(0, ddof=1) / np.sqrt(8), rtol=1e-12)
    (out,) = sums.finish(16, None, False)
    assert out.scheme == "antithetic" and out.votes.sum() == 16
    np.testing.assert_array_equal(out.independent_votes, np.bincount(p[0::2].argmax(1), minlength=4))
    np.testing.assert_allclose(out.resampling_units, pairs.astype(np.float32), rtol=1e-6)
    plain = _sums_of(w, p, False, batch)
    np.testing.assert_allclose(plain.mean_se(16)[1][0], standard_error(w.sum(0), (w * w).sum(0), 16))


def test_a_map_linear_in_the_noise_has_no_antithetic_error():
    """w(e) = a + B e: each pair mean is a, so the antithetic SE is 0 where the plain SE is not."""
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((8, 3))
    noise[1::2] = -noise[0::2]
    a, b = rng.random(6), rng.standard_normal((3, 6)) * 0.01
    w = a + noise @ b
    p = np.tile([0.7, 0.3], (8, 1))
    assert np.abs(_sums_of(w, p, True, 8).mean_se(8)[1]).max() < 1e-15
    assert _sums_of(w, p, False, 8).mean_se(8)[1].min() > 1e-4


def test_the_bootstrap_floor_resamples_pair_means():
    """Samples whose pairs all have the same mean: resampling pairs gives floor 1 (every resample
    mean is that mean), resampling single draws does not."""
    rng = np.random.default_rng(3)
    base = rng.random(16) * 0.05  # close weights: single draws reorder them
    delta = rng.standard_normal((32, 16)) * 0.2
    delta[1::2] = -delta[0::2]
    samples = base + delta

    def output(scheme: str) -> SmoothedOutput:
        return SmoothedOutput(attention=samples.mean(0), attention_se=np.zeros(16), probs=np.array([1.0]),
                              probs_se=np.zeros(1), votes=np.array([32]), n_samples=32, t_star=1,
                              denoised_sample=np.zeros((3, 2, 2)), samples_attention=samples, scheme=scheme)

    floor = NoiseFloorSettings(bootstrap=50)
    paired = noise_floor_estimate(floor, 4, output("antithetic"), None, np.random.default_rng(0))
    single = noise_floor_estimate(floor, 4, output("independent"), None, np.random.default_rng(0))
    assert paired.value == 1.0 and single.value < 0.9


def test_antithetic_needs_an_even_number_of_draws(tiny_pair):
    with pytest.raises(SettingError, match="even"):
        SamplingSettings(scheme="antithetic", n_samples=33)
    with pytest.raises(SettingError, match="sampling scheme"):
        AnalysisConfig.of(sampling="sobol")
    fvit = FaithfulViT.from_pair(tiny_pair, 0.25)
    with pytest.raises(SettingError, match="even"):
        fvit.sample(torch.rand(1, 3, 32, 32), 7, scheme="antithetic")
    # denoise-only makes one draw: nothing to pair, the scheme does not apply
    (out,) = FaithfulViT.from_pair(tiny_pair, 0.25, mode="denoise-only").sample(torch.rand(1, 3, 32, 32), 8,
                                                                               scheme="antithetic")
    assert out.n_samples == 1 and out.scheme == "independent"


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(5).random((3, 32, 32)).astype(np.float32)


def test_an_antithetic_analysis_says_so_and_certifies_from_independent_draws(image, tiny_pair):
    fast = dict(n_samples=16, steps=2, bootstrap=20, k=4, batch_size=64)
    result = analyze(image, AnalysisConfig.of(**fast, sampling="antithetic"), pair=tiny_pair)
    data = json.loads(result.dumps())
    assert data["config"]["sampling"] == "antithetic"
    c = data["fvit"]["certified"]
    assert c["vote_draws"] == 8 and c["vote_scheme"] == "first of each antithetic pair"
    assert sum(data["fvit"]["votes"]["clean"]) == 16  # the votes figure shows every draw
    plain = analyze(image, AnalysisConfig.of(**fast, sampling="independent"), pair=tiny_pair)
    assert plain.faithful.certified.vote_draws == 16 and plain.faithful.certified.vote_scheme == "every draw"
    same = analyze(image, AnalysisConfig.of(**fast, sampling="antithetic"), pair=tiny_pair)
    assert json.dumps({**data, "timing": None}) == json.dumps({**json.loads(same.dumps()), "timing": None})
    # Early stopping and shared noise keep the pairs (every look is after whole pairs).
    stopped = analyze(image, AnalysisConfig.of(**{**fast, "n_samples": 64}, sampling="antithetic", early_stop=True,
                                               shared_noise=True), pair=tiny_pair)
    assert stopped.faithful.n_samples % 2 == 0
