"""The embedded default pair: it loads offline from assets/ and is as accurate as its cards say."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fvit_core.data.images import load_image
from fvit_core.models import MODELS_DIR, load_pair
from helpers import smooth

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"
SHARED_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-test-2k"


@pytest.fixture(scope="module")
def default_pair():
    return load_pair("default")


def _samples(pair):
    labels = json.loads((SAMPLES / "labels.json").read_text())
    names = pair.classifier.class_names
    items = [(f, names.index(v["label"])) for f, v in labels.items() if f.startswith("cifar10_")]
    x = torch.stack([torch.from_numpy(load_image(SAMPLES / f)) for f, _ in items])
    return x, torch.tensor([y for _, y in items])


def test_weights_are_safetensors_and_small():
    files = [p for p in MODELS_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in weights) < 40e6


def test_gallery_has_two_images_per_class(default_pair):
    x, y = _samples(default_pair)
    assert np.bincount(y.numpy(), minlength=10).min() >= 2


def test_shipped_pair_classifies_the_gallery(default_pair):
    x, y = _samples(default_pair)
    with torch.no_grad():
        vanilla_acc = float((default_pair.classifier(x).argmax(-1) == y).float().mean())
    outs = smooth(default_pair, x, sigma=0.25, n_samples=16, generator=torch.Generator().manual_seed(0))
    dds_acc = float(np.mean([o.label == int(t) for o, t in zip(outs, y)]))
    # Random weights would score about 0.1; the shipped pair scores 0.70 / 0.65 here.
    assert vanilla_acc >= 0.6 and dds_acc >= 0.5


@pytest.mark.skipif(not SHARED_TEST.is_dir(), reason="shared CIFAR-10 test subset not present")
def test_shipped_classifier_accuracy_on_held_out_images(default_pair):
    """400 held-out test images (40 per class): the card reports about 85% on all 10,000."""
    names = default_pair.classifier.class_names
    xs, ys = [], []
    for label, name in enumerate(names):
        for path in sorted((SHARED_TEST / name).iterdir())[:40]:
            xs.append(torch.from_numpy(load_image(path)))
            ys.append(label)
    with torch.no_grad():
        pred = default_pair.classifier(torch.stack(xs)).argmax(-1)
    assert float((pred == torch.tensor(ys)).float().mean()) >= 0.78
