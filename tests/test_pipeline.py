"""analyze(): the one call the app and the CLI share."""

import functools
import json
import threading

import numpy as np
import pytest
import torch

from fvit_core.analysis.config import AnalysisConfig

from fvit_core.analysis.pipeline import analyze

FAST = dict(n_samples=6, steps=2, bootstrap=20, k=4, batch_size=64)


def _image(h=32, w=32, seed=0):
    return np.random.default_rng(seed).random((3, h, w), dtype=np.float32)


def test_result_json_has_the_documented_fields(tiny_pair):
    result = analyze(_image(), AnalysisConfig.of(**FAST), pair=tiny_pair)
    data = json.loads(result.dumps())
    assert set(data) >= {"config", "attack", "vanilla", "fvit", "timing"}
    assert {"name", "linf", "l2"} <= set(data["attack"])
    for model in ("vanilla", "fvit"):
        for side in ("clean", "attacked"):
            view = data[model][side]
            assert {"label", "probs", "attention"} <= set(view)
            assert len(view["attention"]) == 16 and abs(sum(view["attention"]) - 1) < 1e-6
            assert abs(sum(view["probs"]) - 1) < 1e-6
        assert 0 <= data[model]["topk_overlap"] <= 1
        assert set(data[model]["divergences"]) == {"kl", "js", "tv", "hellinger", "renyi"}
    assert {"class_radius", "topk_radius_l2", "topk_radius_linf"} <= set(data["fvit"]["certified"])
    assert data["fvit"]["n_samples"] == 6 and 0 <= data["fvit"]["topk_overlap_floor"] <= 1
    assert data["timing"]["total"] >= data["timing"]["smoothing"] > 0


def test_attack_stays_within_budget_and_is_reported(tiny_pair):
    result = analyze(_image(), AnalysisConfig.of(eps=4 / 255, **FAST), pair=tiny_pair)
    delta = result.attacked_image - result.clean_image
    assert np.abs(delta).max() <= 4 / 255 + 1e-6
    assert result.attack["linf"] == pytest.approx(float(np.abs(delta).max()), abs=1e-7)
    assert result.attack["l2"] == pytest.approx(float(np.linalg.norm(delta)), rel=1e-5)
    assert result.attack["params"]["alpha"] == pytest.approx(4 / 255 / 5)


def test_no_attack_gives_identical_vanilla_maps(tiny_pair):
    result = analyze(_image(), AnalysisConfig.of(attack="none", **{k: v for k, v in FAST.items() if k != "steps"}),
                     pair=tiny_pair)
    assert result.vanilla.topk_overlap == 1.0 and not result.vanilla.label_flip
    assert result.attack["linf"] == 0.0


def test_same_seed_gives_identical_json_and_other_seed_differs(tiny_pair):
    a = analyze(_image(), AnalysisConfig.of(seed=3, **FAST), pair=tiny_pair).to_json()
    b = analyze(_image(), AnalysisConfig.of(seed=3, **FAST), pair=tiny_pair).to_json()
    c = analyze(_image(), AnalysisConfig.of(seed=4, **FAST), pair=tiny_pair).to_json()
    for d in (a, b, c):
        d.pop("timing")
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(c)


def test_large_and_odd_sized_images_are_resized(tiny_pair):
    result = analyze(_image(480, 640), AnalysisConfig.of(**FAST), pair=tiny_pair)
    assert result.clean_image.shape == (3, 32, 32)
    crop = analyze(_image(480, 640), AnalysisConfig.of(image_mode="center_crop", **FAST), pair=tiny_pair)
    assert crop.clean_image.shape == (3, 32, 32)
    assert not np.allclose(result.clean_image, crop.clean_image)


def test_shared_noise_option_and_overlap_curve(tiny_pair):
    result = analyze(_image(), AnalysisConfig.of(shared_noise=True, **FAST), pair=tiny_pair)
    curve = result.fvit.overlap_curve
    assert curve.shape == (16,) and curve[-1] == 1.0
    assert result.fvit.topk_overlap == pytest.approx(curve[3])


def test_concurrent_analyses_equal_sequential_ones(tiny_pair):
    """One cached pair serving several threads: no cross-talk in attention capture."""
    configs = [AnalysisConfig.of(seed=s, method=m, **FAST) for s, m in
               [(0, "raw"), (1, "rollout"), (2, "grad_rollout"), (3, "gradcam")]]
    images = [_image(seed=i) for i in range(4)]
    expected = [analyze(img, cfg, pair=tiny_pair).to_json() for img, cfg in zip(images, configs)]
    got = [None] * 4
    barrier = threading.Barrier(4)

    def work(i):
        barrier.wait()
        got[i] = analyze(images[i], configs[i], pair=tiny_pair).to_json()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        e.pop("timing"), g.pop("timing")
        assert json.dumps(e) == json.dumps(g)


@pytest.mark.parametrize("change, message", [
    ({"sigma": -0.1}, "sigma"), ({"n_samples": 0}, "n_samples"), ({"k": 17}, "exceeds"),
    ({"eps": -1.0}, "eps"), ({"attack": "nope"}, "unknown attack"), ({"method": "nope"}, "unknown explanation method"),
    ({"mode": "nope"}, "unknown smoothing mode"), ({"beta": 0.0}, "beta"),
    ({"sensitivity_samples": 65}, "0..64"), ({"sensitivity_samples": 2, "sensitivity_radius": 0.0}, "radius"),
    ({"sensitivity_norm": "L1"}, "unknown sensitivity norm"),
])
def test_invalid_settings_are_refused_with_a_message(tiny_pair, change, message):
    """Refused when the settings are made (before any model or image is touched), or, for what
    depends on the model (k at most its patches), when the analysis starts."""
    with pytest.raises(ValueError, match=message):
        analyze(_image(), AnalysisConfig.of(**{**FAST, **change}), pair=tiny_pair)


@pytest.mark.parametrize("bad", [np.zeros((32, 32, 3), np.float32), np.full((3, 8, 8), 2.0, np.float32),
                                 np.full((3, 8, 8), np.nan, np.float32)])
def test_bad_images_are_refused(tiny_pair, bad):
    with pytest.raises(ValueError, match="image must be"):
        analyze(bad, AnalysisConfig.of(**FAST), pair=tiny_pair)


def test_settings_round_trip_through_a_file(tmp_path):
    cfg = AnalysisConfig.of(sigma=0.5, attack="fgsm", eps=2 / 255, k=3)
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert AnalysisConfig.from_file(path) == cfg
    path.write_text(json.dumps({"sigmaa": 1}))
    with pytest.raises(ValueError, match="unknown settings"):
        AnalysisConfig.from_file(path)


# ------------------------------------------------------------------ shared work and cheaper answers


def _strip(result):
    data = result.to_json()
    data.pop("timing")
    return json.dumps(data)


def test_smoothing_settings_reuse_the_cached_attack(tiny_pair, monkeypatch):
    from fvit_core.analysis import pipeline
    from fvit_core.analysis.cache import AnalysisCache

    cache = AnalysisCache()
    calls = []
    real = pipeline.run_attack
    monkeypatch.setattr(pipeline, "run_attack", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    analyze = functools.partial(pipeline.analyze, cache=cache)
    first = analyze(_image(seed=5), AnalysisConfig.of(**FAST), pair=tiny_pair)
    other_sigma = analyze(_image(seed=5), AnalysisConfig.of(**{**FAST, "sigma": 0.5}), pair=tiny_pair)
    assert len(calls) == 1 and other_sigma.faithful.sigma == 0.5
    np.testing.assert_array_equal(first.attacked_image, other_sigma.attacked_image)
    analyze(_image(seed=5), AnalysisConfig.of(**{**FAST, "seed": 9}), pair=tiny_pair)  # new attack seed
    analyze(_image(seed=6), AnalysisConfig.of(**FAST), pair=tiny_pair)  # new image
    assert len(calls) == 3
    cache.clear()
    again = analyze(_image(seed=5), AnalysisConfig.of(**FAST), pair=tiny_pair)
    assert len(calls) == 4 and _strip(again) == _strip(first)
    # Another explanation method explains the same attacked image; the topk attack reads the
    # method, so it attacks again.
    rollout = analyze(_image(seed=5), AnalysisConfig.of(**{**FAST, "method": "rollout"}), pair=tiny_pair)
    assert len(calls) == 4
    np.testing.assert_array_equal(rollout.attacked_image, first.attacked_image)
    cache.clear()
    assert _strip(analyze(_image(seed=5), AnalysisConfig.of(**{**FAST, "method": "rollout"}), pair=tiny_pair)) == _strip(rollout)
    assert len(calls) == 5
    for method in ("raw", "rollout"):
        analyze(_image(seed=5), AnalysisConfig.of(**{**FAST, "attack": "topk", "method": method}), pair=tiny_pair)
    assert len(calls) == 7
    first.attacked_image[:] = 0  # a result's arrays never alias the cache
    assert _strip(analyze(_image(seed=5), AnalysisConfig.of(**FAST), pair=tiny_pair)) == _strip(again)


def test_cached_estimates_are_reused_only_where_nothing_they_depend_on_changed(tiny_pair, monkeypatch):
    """Changing only the attack smooths the attacked image alone; changing only settings computed
    from the estimates smooths nothing; both give what a fresh analysis gives. Any smoothing
    setting, the seed, another image or a cleared cache smooths again."""
    from fvit_core.analysis import pipeline
    from fvit_core.analysis.cache import AnalysisCache
    from fvit_core.method.faithful_vit import FaithfulViT

    cache = AnalysisCache()
    sizes, attacks = [], []
    real_sample, real_attack = FaithfulViT.sample, pipeline.run_attack
    monkeypatch.setattr(FaithfulViT, "sample", lambda self, images, n, **kw: sizes.append(len(images)) or
                        real_sample(self, images, n, **kw))
    monkeypatch.setattr(pipeline, "run_attack", lambda *a, **kw: attacks.append(1) or real_attack(*a, **kw))

    def run(**changed):
        before = len(sizes), len(attacks)
        result = analyze(_image(seed=4), AnalysisConfig.of(**{**FAST, **changed}), pair=tiny_pair, cache=cache)
        return result, len(sizes) - before[0], len(attacks) - before[1]

    def fresh(**changed):
        return analyze(_image(seed=4), AnalysisConfig.of(**{**FAST, **changed}), pair=tiny_pair)

    first, smoothed, attacked = run()
    assert (smoothed, attacked) == (2, 1)  # clean, attacked; one attack
    weaker, smoothed, attacked = run(eps=4 / 255)
    assert (smoothed, attacked) == (1, 1)  # the attacked image only
    other, smoothed, attacked = run(attack="fgsm", steps=None)
    assert (smoothed, attacked) == (1, 1) and other.attack["name"] == "fgsm"
    for result in (weaker, other):
        np.testing.assert_array_equal(result.fvit.clean.attention, first.fvit.clean.attention)
        np.testing.assert_array_equal(result.faithful.votes_clean, first.faithful.votes_clean)
    assert _strip(fresh(eps=4 / 255)) == _strip(weaker)
    assert _strip(fresh(attack="fgsm", steps=None)) == _strip(other)
    # Settings computed from the estimates alone: no smoothing and no attack.
    run()
    for changed in ({"k": 3}, {"beta": 0.75}, {"confidence_alpha": 0.01}, {"renyi_alpha": 3.0},
                    {"sensitivity_samples": 2}):
        cached, smoothed, attacked = run(**changed)
        # The sensitivity check smooths its own perturbed copies, never cached.
        assert (smoothed, attacked) == (1 if "sensitivity_samples" in changed else 0, 0), changed
        assert _strip(fresh(**changed)) == _strip(cached), changed
        run()
    # Any smoothing setting, the seed or another image: both estimates again.
    for changed in ({"sigma": 0.5}, {"n_samples": 8}, {"seed": 9}, {"precision": "bfloat16"}, {"method": "rollout"},
                    {"noise_floor": False}, {"noise_floor_estimator": "bootstrap"}):
        assert run(**changed)[1] == 2, changed
    assert analyze(_image(seed=8), AnalysisConfig.of(**FAST), pair=tiny_pair, cache=cache) is not None
    assert sizes[-2:] == [2, 1]  # the clean image with its independent second estimate, then the attacked one
    # A result's arrays never alias the cache.
    weaker = run(eps=4 / 255)[0]
    weaker.faithful.votes_clean[:] = 0
    weaker.fvit.clean.attention[:] = 0
    weaker.fvit.attacked.attention[:] = 0
    again, smoothed, attacked = run(eps=4 / 255)
    assert (smoothed, attacked) == (0, 0) and _strip(again) == _strip(fresh(eps=4 / 255))
    # clear(attacks=False) forgets the estimates and keeps the attack; without a cache nothing is kept.
    run()
    cache.clear(attacks=False)
    assert run()[1:] == (2, 0)
    before = len(sizes), len(attacks)
    fresh()
    assert (len(sizes) - before[0], len(attacks) - before[1]) == (2, 1)


def test_analyze_many_equals_separate_analyses(tiny_pair):
    from fvit_core.analysis import pipeline
    from fvit_core.analysis.pipeline import analyze_many

    configs = [AnalysisConfig.of(**{**FAST, "sigma": s}) for s in (0.12, 0.25, 0.5)]
    calls = []
    real = pipeline.run_attack
    pipeline.run_attack = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    try:
        together = analyze_many(_image(seed=2), configs, pair=tiny_pair)
    finally:
        pipeline.run_attack = real
    assert len(calls) == 1  # one attack for the sweep: its private cache
    apart = [analyze(_image(seed=2), c, pair=tiny_pair) for c in configs]
    assert [_strip(a) for a in together] == [_strip(b) for b in apart]
    with pytest.raises(ValueError, match="at least one"):
        analyze_many(_image(), [], pair=tiny_pair)


def test_bootstrap_noise_floor_needs_no_third_batch(tiny_pair, monkeypatch):
    from fvit_core.method.faithful_vit import FaithfulViT

    sizes = []
    real = FaithfulViT.sample
    monkeypatch.setattr(FaithfulViT, "sample", lambda self, images, n, **kw: sizes.append(len(images)) or
                        real(self, images, n, **kw))
    result = analyze(_image(), AnalysisConfig.of(**{**FAST, "noise_floor_estimator": "bootstrap"}), pair=tiny_pair)
    d = result.faithful
    assert sizes == [1, 1]  # clean (while the attack runs), then attacked: no third estimate
    assert 0 <= d.topk_overlap_floor <= 1 and d.topk_overlap_floor_ci[0] <= d.topk_overlap_floor_ci[1]
    # No third batch: CERTIFY's class guess is the vanilla clean prediction, independent of the noise.
    c = d.certified
    assert c.independent_selection and c.selection == "vanilla-prediction"
    guess = int(np.argmax(result.vanilla.clean.probs))
    assert c.predicted_class in (guess, -1)
    if c.predicted_class == -1:
        assert c.class_radius == 0.0
    with pytest.raises(ValueError, match="unknown noise floor estimator 'guess'"):
        AnalysisConfig.of(**{**FAST, "noise_floor_estimator": "guess"})


def test_bootstrap_noise_floor_tracks_the_spread():
    from fvit_core.analysis.noise_floor import bootstrap_noise_floor

    rng = np.random.default_rng(0)
    steady = np.tile(np.linspace(1, 2, 16), (40, 1)) + rng.normal(0, 1e-4, (40, 16))
    noisy = np.tile(np.linspace(1, 2, 16), (40, 1)) + rng.normal(0, 2.0, (40, 16))
    assert bootstrap_noise_floor(steady, 4, 100, np.random.default_rng(1))[0] == 1.0
    assert bootstrap_noise_floor(noisy, 4, 100, np.random.default_rng(1))[0] < 0.9


def test_vectorised_bootstrap_equals_the_per_resample_loop():
    from fvit_core import metrics
    from fvit_core.analysis.noise_floor import bootstrap_overlap

    rng = np.random.default_rng(0)
    a, b = rng.dirichlet(np.ones(16), 30), rng.dirichlet(np.ones(16), 30)
    g = np.random.default_rng(7)
    values = []
    for _ in range(50):
        ma, mb = a[g.integers(0, 30, 30)].mean(0), b[g.integers(0, 30, 30)].mean(0)
        values.append(metrics.topk_overlap(ma, mb, 4))
    expected = tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))
    assert bootstrap_overlap(a, b, 4, 50, np.random.default_rng(7)) == expected


def test_bfloat16_and_early_stop_settings(tiny_pair):
    no_attack = {k: v for k, v in FAST.items() if k != "steps"}
    cfg = AnalysisConfig.of(**{**no_attack, "attack": "none", "k": 2, "n_samples": 48, "precision": "bfloat16",
                            "early_stop": True, "sigma": 0.01})
    result = analyze(_image(), cfg, pair=tiny_pair)
    d = result.faithful
    assert d.n_samples == 32  # settled at the first check (sigma this small leaves no spread)
    fvit_json = result.to_json()["fvit"]
    assert d.stopped_early and fvit_json["stopped_early"] is True and fvit_json["n_samples"] == 32
    assert result.to_json()["config"]["n_samples"] == 48  # what was asked stays in the settings
    assert int(d.votes_clean.sum()) == int(d.votes_attacked.sum()) == 32
    assert AnalysisConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad, message in (({"precision": "float16"}, "precision"), ({"early_stop_alpha": 1.5}, "early_stop_alpha")):
        with pytest.raises(ValueError, match=message):
            AnalysisConfig.of(**{**FAST, **bad})


def test_concurrent_analyses_on_cpu_workers_equal_sequential_ones(tiny_pair):
    """Two intra-op threads: smoothing on the worker pool, attacks on the single-threaded worker."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        configs = [AnalysisConfig.of(seed=s, method=m, **FAST) for s, m in [(5, "raw"), (6, "rollout"), (7, "raw")]]
        expected = [_strip(analyze(_image(seed=i), c, pair=tiny_pair)) for i, c in enumerate(configs)]
        got = [None] * len(configs)

        def work(i):
            got[i] = _strip(analyze(_image(seed=i), configs[i], pair=tiny_pair))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(configs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == expected
    finally:
        torch.set_num_threads(before)


def test_clean_image_is_smoothed_while_the_attack_runs(tiny_pair, monkeypatch):
    """The attack waits until the clean smoothing has started: without the overlap this would
    time out instead of returning the result that the one-call path gives."""
    from fvit_core.analysis import pipeline

    started = threading.Event()
    from fvit_core.method.faithful_vit import FaithfulViT

    real_attack, real_sample = pipeline.run_attack, FaithfulViT.sample

    def attack(*args, **kwargs):
        assert started.wait(timeout=60), "the clean image was not smoothed during the attack"
        return real_attack(*args, **kwargs)

    def sample(self, images, n_samples, **kwargs):
        started.set()
        return real_sample(self, images, n_samples, **kwargs)

    monkeypatch.setattr(pipeline, "run_attack", attack)
    monkeypatch.setattr(FaithfulViT, "sample", sample)
    overlapped = analyze(_image(seed=3), AnalysisConfig.of(**FAST), pair=tiny_pair)
    monkeypatch.setattr(pipeline, "run_attack", real_attack)
    assert _strip(analyze(_image(seed=3), AnalysisConfig.of(**FAST), pair=tiny_pair)) == _strip(overlapped)
    assert overlapped.timing["attack"] > 0 and overlapped.faithful.n_samples == FAST["n_samples"]


@pytest.mark.parametrize("estimator", ["bootstrap", "independent"])
def test_map_metrics_and_their_floor_in_the_json(tiny_pair, estimator):
    from fvit_core.metrics import MAP_METRICS, map_metrics

    result = analyze(_image(seed=7), AnalysisConfig.of(**{**FAST, "noise_floor_estimator": estimator}), pair=tiny_pair)
    data = json.loads(result.dumps())
    for model in ("vanilla", "fvit"):
        clean, attacked = (np.array(data[model][side]["attention"]) for side in ("clean", "attacked"))
        assert data[model]["map_metrics"] == pytest.approx(map_metrics(clean, attacked, (4, 4), 4))
        assert data[model]["sensitivity"] is None  # off by default
    floor = data["fvit"]["map_metrics_floor"]
    assert list(floor) == list(MAP_METRICS)
    assert -1 <= floor["spearman"] <= 1 and floor["centroid_shift"] >= 0 and 0 <= floor["topk_mass"] <= 1
    if estimator == "independent":  # one pair: the clean estimate against the second one
        assert "map_metrics_floor" in data["fvit"] and floor["ssim"] <= 1
    no_floor = analyze(_image(seed=7), AnalysisConfig.of(**{**FAST, "noise_floor": False}), pair=tiny_pair)
    assert no_floor.faithful.map_metrics_floor is None


def test_neighbourhood_sensitivity_with_its_floor(tiny_pair):
    cfg = AnalysisConfig.of(**{**FAST, "sensitivity_samples": 3, "sensitivity_radius": 0.05})
    result = analyze(_image(seed=8), cfg, pair=tiny_pair)
    v, f = result.vanilla.sensitivity, result.fvit.sensitivity
    assert 0 < v["mean"] <= v["max"] and 0 < f["mean"] <= f["max"]
    assert f["floor"] > 0  # two clean Monte Carlo estimates differ too
    assert result.timing["sensitivity"] > 0
    # a vanishing radius leaves the deterministic vanilla map (almost) unchanged
    tiny = analyze(_image(seed=8), AnalysisConfig.of(**{**FAST, "sensitivity_samples": 2, "sensitivity_radius": 1e-7}),
                   pair=tiny_pair)
    assert tiny.vanilla.sensitivity["max"] < 1e-3
