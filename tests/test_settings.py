"""The settings (#22): one frozen object per concept, each setting declared once with one default and
one check, composed by the configs, and one flat form (the names of settings files and of the
result JSON) that stays the documented contract."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from fvit_core.analysis.config import AnalysisConfig
from fvit_core.batch.config import CertifyConfig, EvalConfig
from fvit_core.errors import SettingError
from fvit_core.explanations.settings import ExplanationSettings
from fvit_core.method.settings import EarlyStopSettings, SmoothingSettings
from fvit_core.protocol.settings import Settings, flat_defaults, flat_fields, flat_names, from_flat, to_flat
from fvit_core.runtime.strategy import Runtime

# The flat names of each front's settings files as documented before the settings objects existed
# (README "fvit analyze", docs/RESULTS.md's eval_config.json and certify_config.json): a settings
# file or a resumable output folder of any earlier version must keep working.
ANALYSIS_NAMES = {
    "attack", "attack_params", "batch_size", "beta", "bootstrap", "classifier", "confidence_alpha", "denoiser",
    "device", "early_stop", "early_stop_alpha", "eps", "head_fusion", "image_mode", "k", "method", "mode", "model",
    "multistep_steps", "n_samples", "noise_floor", "noise_floor_estimator", "precision", "renyi_alpha", "sampling",
    "seed", "sensitivity_norm", "sensitivity_radius", "sensitivity_samples", "shared_noise", "sigma", "steps", "target"}
EVAL_NAMES = {
    "allow_download", "attack_params", "attacks", "batch_size", "beta", "bootstrap", "classifier", "data", "denoiser",
    "device", "dist_backend", "eps", "figures", "head_fusion", "image_mode", "k", "label_map", "limit", "masks", "methods",
    "model", "modes", "multistep_steps", "n_samples", "noise_floor", "noise_floor_estimator", "out", "sampling",
    "perturbation_test", "precision", "progress", "pt_fill", "pt_samples", "renyi_alpha", "seed", "sensitivity_norm",
    "sensitivity_radius", "sensitivity_samples", "shared_noise", "sigmas", "steps", "strict", "subset_seed"}
CERTIFY_NAMES = {
    "allow_download", "alpha", "batch_size", "beta", "check_attacks", "check_random", "check_samples", "classifier",
    "data", "denoiser", "device", "dist_backend", "figures", "head_fusion", "image_mode", "k", "label_map", "limit",
    "method", "mode", "model", "multistep_steps", "n", "n0", "out", "precision", "progress", "radii", "seed", "sigma",
    "strict", "subset_seed"}
BATCH = {"data": "images", "out": "results"}


@pytest.mark.parametrize("config, names", [(AnalysisConfig, ANALYSIS_NAMES), (EvalConfig, EVAL_NAMES),
                                           (CertifyConfig, CERTIFY_NAMES)])
def test_the_flat_names_are_the_documented_contract_each_declared_once(config, names):
    declared = flat_names(config)
    assert len(declared) == len(set(declared)), "a flat name is declared twice"
    assert set(declared) == names
    # Each flat name lives in exactly one field of one object.
    paths = [path for _, path, _ in flat_fields(config)]
    assert len(paths) == len(set(paths))


@pytest.mark.parametrize("config, extra", [(AnalysisConfig, {}), (EvalConfig, BATCH), (CertifyConfig, BATCH)])
def test_the_flat_form_round_trips_through_json(config, extra):
    changed = {"sigma" if "sigma" in flat_names(config) else "sigmas": 0.5 if config is not EvalConfig else [0.5],
               "k": 3, "seed": 9, "precision": "float32", **extra}
    cfg = config.of(**changed)
    again = config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert cfg.explanation.k == 3 and cfg.runtime.precision == "float32" and cfg.seed == 9
    defaults = flat_defaults(config)
    for name, value in cfg.to_dict().items():  # only what was asked for differs from the defaults
        if name not in changed:
            assert value == defaults[name], name


def test_replace_changes_one_setting_and_checks_it():
    cfg = AnalysisConfig.of(sigma=0.5)
    other = cfg.replace(k=4, attack="fgsm")
    assert (other.explanation.k, other.attack.name, other.smoothing.sigma) == (4, "fgsm", 0.5)
    assert cfg.explanation.k == 8  # frozen: the original is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(SettingError, match="k must be a whole number"):
        cfg.replace(k=0)
    with pytest.raises(SettingError, match="unknown settings sigmaa; known:"):
        cfg.replace(sigmaa=1)


def test_objects_check_themselves_when_made():
    with pytest.raises(SettingError, match=r"sigma must be a number in \[0.001, 4\]"):
        SmoothingSettings(sigma=0.0)
    with pytest.raises(SettingError, match="unknown explanation method 'lime'"):
        ExplanationSettings(method="lime")
    with pytest.raises(SettingError, match="k must be a whole number"):
        ExplanationSettings(k=True)  # a bool is never a number
    with pytest.raises(SettingError, match="smoothing must be SmoothingSettings settings"):
        AnalysisConfig(smoothing="dds")  # type: ignore[arg-type]
    with pytest.raises(SettingError, match="missing settings data, out"):
        EvalConfig.of()
    with pytest.raises(SettingError, match="settings must be a JSON object"):
        from_flat(AnalysisConfig, [("sigma", 0.5)])  # type: ignore[arg-type]
    grid = EvalConfig.of(**BATCH, sigmas=[0.12, 0.25]).grid
    assert grid.sigmas == (0.12, 0.25)  # JSON arrays become the declared tuples


def test_rules_between_objects_live_in_the_config():
    with pytest.raises(SettingError, match="n_samples must be a whole number in 2..100,000"):
        AnalysisConfig.of(n_samples=1, sampling="independent")  # a noise floor compares two estimates
    with pytest.raises(SettingError, match="n_samples must be a whole number in 4..100,000"):
        AnalysisConfig.of(n_samples=2)  # ... each of two antithetic pairs at least
    with pytest.raises(SettingError, match="n_samples must be even and at least 2, got 1"):
        AnalysisConfig.of(n_samples=1)  # antithetic draws come in pairs
    assert AnalysisConfig.of(n_samples=2, noise_floor=False).sampling.n_samples == 2
    assert AnalysisConfig.of(n_samples=1, noise_floor=False, sampling="independent").sampling.n_samples == 1
    with pytest.raises(SettingError, match="certify needs noise"):
        CertifyConfig.of(**BATCH, mode="denoise-only")
    with pytest.raises(SettingError, match="attack 'gn' has no parameter 'eps'"):
        AnalysisConfig.of(attack="gn", eps=0.1)
    # The grid gives eval's attacks their budgets only where an attack has one.
    from fvit_core.batch.grid import settings_grid

    cfg = EvalConfig.of(**BATCH, attacks=["gn", "pgd"], eps=[4 / 255])
    points = settings_grid(cfg.grid)
    assert [(s.attack, s.eps, s.mode) for s in points] == [("gn", None, "vanilla"), ("gn", None, "dds"),
                                                          ("pgd", 4 / 255, "vanilla"), ("pgd", 4 / 255, "dds")]
    assert "eps" not in cfg.resolved_attack(points[0]).params
    assert cfg.resolved_attack(points[2]).params["alpha"] == pytest.approx(4 / 255 / 5)
    with pytest.raises(SettingError, match="belong to none of the attacks"):
        EvalConfig.of(**BATCH, attack_params={"n_queries": 10})


def test_one_default_each():
    """The engine's own defaults are the settings objects': the FViT's runtime, mode and steps,
    the explanation's method and fusion, early stopping's level."""
    from fvit_core.explanations.attention import explain
    from fvit_core.method.faithful_vit import FaithfulViT
    from fvit_core.method.monte_carlo import EarlyStop

    assert AnalysisConfig().runtime == Runtime() and Runtime().precision == "auto"
    init = inspect.signature(FaithfulViT.__init__).parameters
    assert (init["mode"].default, init["multistep_steps"].default) == (SmoothingSettings().mode,
                                                                         SmoothingSettings().multistep_steps)
    for function in (explain, FaithfulViT.sample, FaithfulViT.explain):
        parameters = inspect.signature(function).parameters
        assert parameters["method"].default == ExplanationSettings().method
        assert parameters["head_fusion"].default == ExplanationSettings().head_fusion
    assert EarlyStop(k=1).alpha == EarlyStopSettings().alpha


def test_every_settings_object_is_frozen_and_checked():
    """Every concept's object in the configs is a frozen Settings subclass."""
    seen = set()
    for config in (AnalysisConfig, EvalConfig, CertifyConfig):
        for _, path, _ in flat_fields(config):
            owner = config
            for attribute in path[:-1]:
                owner = {f.name: f.default_factory for f in dataclasses.fields(owner)}[attribute]
            seen.add(owner)
    assert all(issubclass(kind, Settings) and kind.__dataclass_params__.frozen for kind in seen)
    assert len(seen) >= 12
    assert to_flat(Runtime()) == {"precision": "auto", "batch_size": 256}  # parallel is not a setting of the files
