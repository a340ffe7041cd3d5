"""The class an explanation explains (grad-cam's and Captum's `target`): chosen in the Python
API, the CLI and the dashboard; default the predicted class; named in the JSON and the figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.pipeline import analyze
from fvit_core.errors import SettingError
from fvit_core.explanations.attention import explain
from fvit_core.explanations.settings import CLASS_METHODS, ExplanationSettings
from fvit_core.report import static, style

FAST = dict(n_samples=6, bootstrap=20, k=4, batch_size=64, attack="none")


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).random((3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def predicted(image, tiny_pair):
    with torch.no_grad():
        return int(tiny_pair.classifier(torch.from_numpy(image)[None]).argmax(-1))


@pytest.fixture(scope="module")
def other(predicted):
    return (predicted + 3) % 10


def test_the_methods_that_depend_on_a_class_are_the_gradient_ones():
    assert set(CLASS_METHODS) == {"grad_rollout", "gradcam", "transformer_attribution", "lrp", "partial_lrp",
                                 "attr_rollout"}
    assert not ExplanationSettings(method="raw", target=2).depends_on_target
    assert ExplanationSettings(method="gradcam").depends_on_target


def test_the_vanilla_map_explains_the_chosen_class(image, tiny_pair, predicted, other):
    """The vanilla ViT's clean map for target t is explain(..., target=t); without a target it is
    the predicted class's, and another class gives another map."""
    x = torch.from_numpy(image)[None]
    chosen = analyze(image, AnalysisConfig.of(**FAST, method="gradcam", target=other), pair=tiny_pair)
    default = analyze(image, AnalysisConfig.of(**FAST, method="gradcam"), pair=tiny_pair)
    direct = explain(tiny_pair.classifier, x, method="gradcam", target=other).attention[0].numpy()
    np.testing.assert_allclose(chosen.vanilla.clean.attention, direct, rtol=1e-5, atol=1e-7)
    for_predicted = explain(tiny_pair.classifier, x, method="gradcam", target=predicted).attention[0].numpy()
    np.testing.assert_allclose(default.vanilla.clean.attention, for_predicted, rtol=1e-5, atol=1e-7)
    assert not np.allclose(chosen.vanilla.clean.attention, default.vanilla.clean.attention, atol=1e-4)
    # The FViT's maps follow the class too (every draw explains the chosen class).
    assert not np.allclose(chosen.fvit.clean.attention, default.fvit.clean.attention, atol=1e-4)
    # The prediction itself does not change: only what is explained.
    assert chosen.vanilla.clean.label == default.vanilla.clean.label == predicted


def test_the_json_and_the_figures_name_the_class(image, tiny_pair, other):
    result = analyze(image, AnalysisConfig.of(**FAST, method="transformer_attribution", target=other), pair=tiny_pair)
    name = result.class_names[other]
    data = json.loads(result.dumps())
    assert data["explanation"] == {"method": "transformer_attribution", "head_fusion": "mean", "target": other,
                                   "target_name": name, "depends_on_target": True}
    assert data["config"]["target"] == other
    assert f"explains {name}" in style.settings_text(result)
    fig = static.compare_figure(result)
    assert f"explains {name}" in fig._suptitle.get_text()
    default = analyze(image, AnalysisConfig.of(**FAST, method="transformer_attribution"), pair=tiny_pair)
    assert default.explanation["target"] is None and "explains the predicted class" in style.settings_text(default)


def test_attention_ignores_the_class_and_says_so(image, tiny_pair, other):
    chosen = analyze(image, AnalysisConfig.of(**FAST, method="raw", target=other), pair=tiny_pair)
    default = analyze(image, AnalysisConfig.of(**FAST, method="raw"), pair=tiny_pair)
    np.testing.assert_array_equal(chosen.vanilla.clean.attention, default.vanilla.clean.attention)
    assert "this method ignores the class" in style.settings_text(chosen)
    assert style.target_text(default) == ""  # nothing to say: attention has no class


@pytest.mark.parametrize("bad, match", [(10, r"0\.\.9"), (-1, "whole number"), (1.5, "whole number"), ("cat", "whole number")])
def test_a_class_the_model_lacks_is_refused(image, tiny_pair, bad, match):
    """Not a class index: refused when the settings are made; past the model's classes: refused
    before any work, naming the range."""
    with pytest.raises(SettingError, match=match):
        analyze(image, AnalysisConfig.of(**FAST, method="gradcam", target=bad), pair=tiny_pair)


def test_the_cli_takes_a_class_name_or_an_index(tiny_pair_dir, tmp_path, capsys, image, tiny_pair, other):
    from PIL import Image

    from fvit_core.cli.main import main

    image_file = tmp_path / "x.png"
    Image.fromarray(np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(image_file)
    name = tiny_pair.classifier.class_names[other]
    common = ["analyze", str(image_file), "--classifier", str(tiny_pair_dir / "classifier"), "--denoiser",
              str(tiny_pair_dir / "denoiser"), "--n-samples", "6", "--attack", "none", "--k", "4", "--method", "gradcam"]
    outputs = []
    for given in (name.upper(), str(other)):
        out = tmp_path / f"{given}.json"
        assert main([*common, "--target", given, "--json", str(out)]) == 0
        outputs.append(json.loads(out.read_text()))
        assert f"explains {name}" in capsys.readouterr().out
    assert [o["explanation"]["target"] for o in outputs] == [other, other]
    assert outputs[0]["explanation"]["target_name"] == name
    assert main([*common, "--target", "zebra"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "--target 'zebra' is not a class of the model" in said[0] and name in said[0]


def test_batch_runs_explain_each_images_own_class():
    """fvit eval and fvit certify have no --target: a batch explains each image's prediction."""
    from fvit_core.batch.config import CertifyConfig, EvalConfig
    from fvit_core.protocol.settings import flat_names

    assert "target" in flat_names(AnalysisConfig)
    assert "target" not in flat_names(EvalConfig) and "target" not in flat_names(CertifyConfig)
