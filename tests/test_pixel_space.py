"""One smoothing space (docs/METHOD.md): with a denoiser larger than the classifier, noise is added
at the denoiser's size, so the UNet sees exactly the noise it was trained on at t*."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma
from fvit_core.models import TINY_UNET_ARGS, ModelPair, load_denoiser
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.pipeline import analyze
from fvit_core.data.pixels import is_uniform_rescale, resize_pixels

SIGMA = 0.25


@pytest.fixture(scope="module")
def den64_dir(tmp_path_factory):
    """A tiny 64 px UNet saved through diffusers' save_pretrained."""
    folder = tmp_path_factory.mktemp("den64")
    torch.manual_seed(1)
    UNet2DModel(**{**TINY_UNET_ARGS, "sample_size": 64}).save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def mixed_pair(den64_dir, tiny_pair) -> ModelPair:
    """The tiny 32 px classifier with the 64 px tiny UNet, loaded through the real loader."""
    return ModelPair(classifier=tiny_pair.classifier, denoiser=load_denoiser(den64_dir), name="mixed")


def _record_unet_inputs(pair: ModelPair) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], object]:
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args):
        calls.append((args[0].detach().float().clone(), torch.as_tensor(args[1]).clone()))

    return calls, pair.denoiser.unet.register_forward_pre_hook(hook)


def test_unet_sees_white_noise_of_twice_sigma_at_its_own_size(mixed_pair):
    image = np.random.default_rng(0).random((3, 48, 48), dtype=np.float32)
    calls, handle = _record_unet_inputs(mixed_pair)
    try:
        result = analyze(image, AnalysisConfig.of(attack="none", sigma=SIGMA, n_samples=16, precision="float32",
                                               bootstrap=0, noise_floor=False), pair=mixed_pair)
    finally:
        handle.remove()
    t_star = timestep_for_sigma(mixed_pair.denoiser.alphas_cumprod, SIGMA)
    abar = float(mixed_pair.denoiser.alphas_cumprod[t_star])
    clean = torch.from_numpy(result.clean_image)
    assert tuple(clean.shape) == (3, 64, 64) and result.faithful.t_star == t_star == 145
    assert result.to_json()["pixel_space"] == {"size": [64, 64], "classifier_input": [32, 32]}
    residuals = []
    for x_t, timesteps in calls:
        assert tuple(x_t.shape[-2:]) == (64, 64) and bool((timesteps == t_star).all())
        residuals.append(x_t / abar ** 0.5 - (2 * clean - 1))  # the diffusion-space noise the UNet must remove
    noise = torch.cat(residuals)
    assert noise.shape[0] == 32  # 16 clean + 16 attacked ("none") samples, and no other call
    assert float(noise.std()) == pytest.approx(2 * SIGMA, rel=0.02)
    for dim in (-1, -2):  # neighbouring pixels, horizontally and vertically
        a, b = noise.narrow(dim, 0, 63).flatten(), noise.narrow(dim, 1, 63).flatten()
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.01


def test_resizing_noise_instead_would_change_it():
    """The pitfall the smoothing space avoids: noise added at 32 px, then resized to 64, is
    neither of std 2*sigma nor white (so the test above can fail)."""
    noise = 2 * SIGMA * torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    up = torch.nn.functional.interpolate(noise, size=(64, 64), mode="bicubic", antialias=True, align_corners=False)
    a, b = up[..., :-1].flatten(), up[..., 1:].flatten()
    assert float(up.std()) < 0.9 * 2 * SIGMA and float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.5


def test_classifier_resizes_the_smoothing_space_as_its_first_layer(mixed_pair):
    clf = mixed_pair.classifier
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(clf(x), clf(resize_pixels(x, (32, 32))), atol=1e-6)
    assert mixed_pair.smoothing_size("dds") == (64, 64) and mixed_pair.smoothing_size("rs") == (32, 32)
    assert ModelPair(classifier=clf, denoiser=None).smoothing_size("dds") == (32, 32)
    assert is_uniform_rescale((64, 64), (32, 32)) and not is_uniform_rescale((64, 48), (32, 32))


def test_rs_keeps_the_classifier_size_and_perturbation_norms_live_in_the_space(mixed_pair):
    image = np.random.default_rng(1).random((3, 40, 40), dtype=np.float32)
    base = dict(attack="fgsm", eps=8 / 255, n_samples=4, bootstrap=0, noise_floor=False, precision="float32")
    rs = analyze(image, AnalysisConfig.of(mode="rs", **base), pair=mixed_pair)
    dds = analyze(image, AnalysisConfig.of(mode="dds", **base), pair=mixed_pair)
    assert rs.pixel_size == (32, 32) and dds.pixel_size == (64, 64)
    assert dds.classifier_size == (32, 32) and dds.clean_view.shape == (3, 32, 32)
    # Linf budget holds in the space the attack was crafted in; L2 grows with the pixel count.
    for result in (rs, dds):
        assert result.attack["linf"] <= 8 / 255 + 1e-6
        assert result.attack["l2"] <= 8 / 255 * np.sqrt(result.clean_image.size) + 1e-5


def test_denoiser_refuses_noise_made_at_another_size(mixed_pair):
    with pytest.raises(ValueError, match="denoiser takes 64x64"):
        one_shot_denoise(mixed_pair.denoiser, torch.rand(1, 3, 32, 32), 145)


def test_resize_keeps_bfloat16_inputs_in_bfloat16():
    """The bfloat16 copies of the DDS networks resize too (no bfloat16 antialiased kernel on CPUs)."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y = resize_pixels(x.bfloat16(), (32, 32))
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 32, 32)
    assert float((y.float() - resize_pixels(x, (32, 32))).abs().max()) < 0.02


def test_eval_rows_live_in_each_modes_pixel_space(den64_dir, tiny_pair_dir, image_folder, tmp_path):
    """Batch evaluation: vanilla and DDS rows share one attacked 64 px image; RS rows have their
    own attack at the classifier's 32 px (4 times fewer pixels: about half the L2 norm)."""
    from conftest import read_rows
    from fvit_core.batch.config import EvalConfig
    from fvit_core.batch.evaluate import run_eval

    run_eval(EvalConfig.of(data=str(image_folder), out=str(tmp_path / "eval"), classifier=str(tiny_pair_dir / "classifier"),
                        denoiser=str(den64_dir), modes=("vanilla", "rs", "dds"), limit=2, n_samples=4, pt_samples=2,
                        steps=5, progress=False, figures=False, precision="float32"))
    rows = read_rows(tmp_path / "eval")
    by = {(r["image"], r["mode"]): r for r in rows}
    for image in {r["image"] for r in rows}:
        vanilla, dds, rs = by[(image, "vanilla")], by[(image, "dds")], by[(image, "rs")]
        assert vanilla["perturbation_l2"] == dds["perturbation_l2"]
        assert dds["perturbation_l2"] > 1.5 * rs["perturbation_l2"]
        for row in (vanilla, dds, rs):
            assert row["perturbation_linf"] <= 8 / 255 + 1e-6


@pytest.mark.parametrize("method", ["transformer_attribution", "lrp", "partial_lrp", "grad_rollout"])
def test_every_explanation_method_reads_the_smoothing_space_through_the_resize(mixed_pair, method):
    """A 64 px image explained by the 32 px ViT gives the map of the resized 32 px image."""
    from fvit_core.explanations.attention import explain

    clf = mixed_pair.classifier
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    big = explain(clf, x, method=method).attention
    small = explain(clf, resize_pixels(x, (32, 32)), method=method).attention
    assert big.shape == (2, 16) and torch.allclose(big, small, atol=1e-5)
