"""The paper's pair by name (``--model imagenet-vit-b16``): files in FVIT_MODELS_DIR, clear
messages when they are missing, class names from timm's ImageNet metadata. Offline: small stand-ins
take the real files' places (a tiny ViT and a converted small ADM from tests/fixtures/adm)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY_VIT_ARGS, make_tiny_vit
from fvit_core.models.adm import convert_adm
from fvit_core.cli.main import main
from fvit_core.models import (MODEL_PAIRS, ModelLoadError, imagenet_class_names, load_classifier, load_pair,
                              save_classifier)
from test_adm import FIXTURES

PAIR = "imagenet-vit-b16"


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FVIT_MODELS_DIR", str(tmp_path))
    assert not MODEL_PAIRS[PAIR].available()
    with pytest.raises(ModelLoadError, match=r"classifier of the 'imagenet-vit-b16' pair is not in .*save-classifier"):
        load_pair(PAIR)
    save_classifier(make_tiny_vit(0), tmp_path / "imagenet-vit-b16", model_args=TINY_VIT_ARGS)
    with pytest.raises(ModelLoadError, match=r"denoiser of the 'imagenet-vit-b16' pair .*convert-adm"):
        load_pair(PAIR)


@pytest.fixture
def stand_in_pair(tmp_path, monkeypatch):
    """FVIT_MODELS_DIR with the pair's two folders: a tiny 32 px ViT and a 16 px converted ADM."""
    monkeypatch.setenv("FVIT_MODELS_DIR", str(tmp_path / "models"))
    save_classifier(make_tiny_vit(0), tmp_path / "models" / "imagenet-vit-b16", model_args=TINY_VIT_ARGS)
    state = {k: v.float() for k, v in load_file(str(FIXTURES / "small-conv_weights.safetensors")).items()}
    torch.save(state, tmp_path / "adm.pt")
    convert_adm(tmp_path / "adm.pt", tmp_path / "models" / "imagenet-adm-256",
                flags=json.loads((FIXTURES / "small-conv_flags.json").read_text()))
    return tmp_path


def test_the_pair_analyses_in_the_denoisers_pixel_space(stand_in_pair, capsys):
    assert MODEL_PAIRS[PAIR].available()
    image = stand_in_pair / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(image)
    out = stand_in_pair / "result.json"
    status = main(["analyze", str(image), "--model", PAIR, "--n-samples", "2", "--steps", "2", "--no-noise-floor",
                   "--json", str(out)])
    assert status == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["pixel_space"] == {"size": [16, 16], "classifier_input": [32, 32]}
    assert result["fvit"]["t_star"] == 145 and len(result["vanilla"]["clean"]["attention"]) == 16


def test_imagenet_heads_get_timm_class_names():
    vit = load_classifier("vit_tiny_patch16_224", random_weights=True).vit  # random weights: only the head's size matters here
    names = imagenet_class_names(vit)
    assert len(names) == 1000 and names[:2] == ("tench", "goldfish") and names[-1] == "toilet tissue"
    assert imagenet_class_names(make_tiny_vit(0).vit) is None  # 10 classes: not ImageNet


def test_save_classifier_needs_download_permission(tmp_path, capsys):
    assert main(["save-classifier", "vit_base_patch16_224", str(tmp_path / "vit")]) == 2
    assert "needs --allow-download" in capsys.readouterr().err and not (tmp_path / "vit").exists()


def test_a_saved_timm_model_keeps_its_architecture_and_names(tmp_path):
    model = load_classifier("vit_tiny_patch16_224", random_weights=True)
    save_classifier(model, tmp_path / "vit", model_args={})
    again = load_classifier(tmp_path / "vit")
    assert again.img_size == (224, 224) and again.class_names == model.class_names and again.num_classes == 1000
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), again(x), atol=1e-5)
