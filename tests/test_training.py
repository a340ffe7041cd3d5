"""Training commands: resumable to the bit, image-folder data, GPU-style augmentation on CPU."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fvit_core.models import TINY_UNET_ARGS
from fvit_core.training.data import augment_batch, load_image_folder
from fvit_core.training.train_classifier import ClassifierTrainConfig, train_classifier
from fvit_core.training.train_denoiser import DenoiserTrainConfig, train_denoiser

VIT_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs", "owls"):
        (root / name).mkdir()
        for i in range(6):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    (root / "cats" / "readme.txt").write_text("ignored")
    return root


def test_image_folder_loads_sorted_classes(folder):
    images, labels, classes = load_image_folder(folder, workers=1)
    assert classes == ["cats", "dogs", "owls"] and images.shape == (18, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(torch.bincount(labels), torch.tensor([6, 6, 6]))


def test_augment_batch_crops_and_flips_within_range():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) / 400
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, pad=2, generator=g)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    same = augment_batch(x, pad=0, flip=False)
    assert torch.equal(same, x)


def _weights(path):
    return load_file(str(path))


def test_classifier_resume_equals_uninterrupted_run(folder, tmp_path):
    common = dict(data=str(folder), model_args=VIT_ARGS, steps=6, batch_size=4, warmup_steps=2, device="cpu",
                  checkpoint_every_s=1e9, ema_decay=0.9)
    train_classifier(ClassifierTrainConfig(out=str(tmp_path / "full"), **common), progress=False)
    part = ClassifierTrainConfig(out=str(tmp_path / "parts"), stop_after_steps=4, **common)
    train_classifier(part, progress=False)
    assert not (tmp_path / "parts" / "model.safetensors").exists()  # stopped early: only the checkpoint
    train_classifier(part, progress=False)
    a, b = _weights(tmp_path / "full" / "model.safetensors"), _weights(tmp_path / "parts" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_denoiser_resume_equals_uninterrupted_run(folder, tmp_path):
    common = dict(data=str(folder), unet_args=TINY_UNET_ARGS, steps=4, batch_size=4, warmup_steps=1, device="cpu",
                  checkpoint_every_s=1e9, ema_decay=0.9)
    train_denoiser(DenoiserTrainConfig(out=str(tmp_path / "full"), **common), progress=False)
    part = DenoiserTrainConfig(out=str(tmp_path / "parts"), stop_after_steps=2, **common)
    train_denoiser(part, progress=False)
    train_denoiser(part, progress=False)
    name = "unet/diffusion_pytorch_model.safetensors"
    a, b = _weights(tmp_path / "full" / name), _weights(tmp_path / "parts" / name)
    assert all(torch.equal(a[k], b[k]) for k in a)
    from fvit_core.models import load_denoiser

    assert load_denoiser(tmp_path / "parts").sample_size == 32


def test_training_loss_decreases_on_a_learnable_task(tmp_path):
    """Two classes that differ in brightness: a few dozen steps must beat chance clearly."""
    root = tmp_path / "easy"
    rng = np.random.default_rng(1)
    for name, level in (("dark", 40), ("bright", 210)):
        (root / name).mkdir(parents=True)
        for i in range(16):
            img = np.clip(rng.normal(level, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    cfg = ClassifierTrainConfig(data=str(root), out=str(tmp_path / "m"), model_args=VIT_ARGS, steps=40, batch_size=16,
                                warmup_steps=5, lr=3e-3, mix_prob=0.0, label_smoothing=0.0, ema_decay=0.5,
                                device="cpu", eval_data=str(root))
    train_classifier(cfg, progress=False)
    import json

    assert json.loads((tmp_path / "m" / "train_summary.json").read_text())["eval_accuracy"] >= 0.9


def test_cli_lists_training_flags(capsys):
    from fvit_core.cli.main import main

    with pytest.raises(SystemExit):
        main(["train-classifier", "--help"])
    text = capsys.readouterr().out
    assert "--time-budget-s" in text and "--stop-after-steps" in text and "--denoiser" in text
