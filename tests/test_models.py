"""Real loaders, offline: timm local-dir folders and diffusers from_pretrained folders."""

import json

import pytest
import torch

from fvit_core.explanations.attention import capture_attention
from fvit_core.models import (ModelLoadError, PixelViT, create_vit, load_classifier, load_denoiser, load_pair,
                              save_classifier)


def test_classifier_round_trip_is_exact(tiny_pair_dir):
    from conftest import make_tiny_vit

    original = make_tiny_vit(0)
    loaded = load_classifier(tiny_pair_dir / "classifier")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))
    assert loaded.num_classes == 10 and loaded.grid_size == (4, 4) and loaded.num_patches == 16
    assert torch.allclose(loaded.mean.flatten(), original.mean.flatten())


def test_loaded_classifier_is_eval_with_unfused_attention_and_capture_fires(tiny_pair_dir):
    model = load_classifier(tiny_pair_dir / "classifier")
    assert not model.training
    assert all(block.attn.fused_attn is False for block in model.vit.blocks)
    with torch.no_grad(), capture_attention(model) as record:
        model(torch.rand(1, 3, 32, 32))
    assert record.n_calls == model.depth


def test_safetensors_file_path_loads_its_folder(tiny_pair_dir):
    model = load_classifier(tiny_pair_dir / "classifier" / "model.safetensors")
    assert model.num_classes == 10


def test_head_reinitialisation_is_refused():
    # vit_tiny_patch16_224 is pretrained with 1000 classes; asking for 10 would silently give a
    # random head. The check happens before any download.
    with pytest.raises(ModelLoadError, match="re-initialise the head"):
        create_vit("vit_tiny_patch16_224", num_classes=10, pretrained=True)


def test_unknown_timm_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown timm model"):
        load_classifier("not_a_model_name")


def test_truncated_weights_give_a_clear_error(tiny_pair_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_pair_dir / "classifier", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_classifier(broken)


def test_mismatched_weights_give_a_clear_error(tiny_pair_dir, tmp_path):
    import shutil

    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_pair_dir / "classifier", wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["model_args"]["embed_dim"] = 48
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="cannot load classifier"):
        load_classifier(wrong)


def test_missing_folder_and_missing_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not a classifier folder"):
        load_classifier(tmp_path)
    with pytest.raises(ModelLoadError, match="not found"):
        load_classifier(tmp_path / "nope" / "deeper")


def test_denoiser_loads_from_folder_and_hub_needs_permission(tiny_pair_dir):
    den = load_denoiser(tiny_pair_dir / "denoiser")
    assert den.num_train_timesteps == 1000 and den.sample_size == 32
    assert abs(float(den.alphas_cumprod[0]) - (1 - 1e-4)) < 1e-7  # float32 in diffusers
    with pytest.raises(ModelLoadError, match="allow downloads"):
        load_denoiser("google/ddpm-cifar10-32")


def test_flat_denoiser_folder_layout_loads(tmp_path, tiny_pair_dir):
    """google/ddpm-cifar10-32 keeps the UNet config and scheduler_config.json at the root."""
    import shutil

    flat = tmp_path / "flat"
    shutil.copytree(tiny_pair_dir / "denoiser" / "unet", flat)
    shutil.copy(tiny_pair_dir / "denoiser" / "scheduler" / "scheduler_config.json", flat)
    assert load_denoiser(flat).sample_size == 32


def test_save_classifier_writes_label_names(tmp_path):
    from conftest import TINY_VIT_ARGS

    vit = create_vit("vit_tiny_patch16_224", num_classes=3, model_args=TINY_VIT_ARGS)
    model = PixelViT(vit, mean=(0.5,) * 3, std=(0.25,) * 3, class_names=("a", "b", "c"))
    save_classifier(model, tmp_path / "m", model_args=TINY_VIT_ARGS)
    loaded = load_classifier(tmp_path / "m")
    assert loaded.class_names == ("a", "b", "c")
    assert torch.allclose(loaded.std.flatten(), torch.full((3,), 0.25))


def test_unknown_pair_name():
    with pytest.raises(ModelLoadError, match="unknown model pair"):
        load_pair("no-such-pair")
