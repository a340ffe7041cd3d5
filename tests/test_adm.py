"""The guided-diffusion (ADM) converter against the reference implementation's own outputs.

tests/fixtures/adm holds, for two small architectures that cover every path of the converter,
random ADM weights (guided-diffusion's key names, float16 values) and what openai/guided-diffusion's
UNetModel computed from them (scripts/verify_adm_reference.py wrote both; docs/REALSIZE.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from fvit_core.cli import models as models_cli
from fvit_core.models.adm import ADM_PRESETS, convert_adm, count_parameters, resolve_flags, unet_config
from fvit_core.cli.main import main
from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma
from fvit_core.models import ModelLoadError, load_denoiser

FIXTURES = Path(__file__).parent / "fixtures" / "adm"
CASES = ("small", "small-conv")


def _checkpoint(case: str, folder: Path) -> tuple[Path, Path]:
    """The fixture's weights saved as guided-diffusion saves them (torch.save of a state dict)."""
    state = {k: v.float() for k, v in load_file(str(FIXTURES / f"{case}_weights.safetensors")).items()}
    ckpt = folder / f"{case}.pt"
    torch.save(state, ckpt)
    return ckpt, FIXTURES / f"{case}_flags.json"


@pytest.mark.parametrize("case", CASES)
def test_converted_model_matches_the_reference_outputs(case, tmp_path, capsys):
    ckpt, flags = _checkpoint(case, tmp_path)
    out = tmp_path / "converted"
    assert main(["convert-adm", str(ckpt), str(out), "--flags", str(flags)]) == 0
    assert "use it with --denoiser" in capsys.readouterr().out
    ref = load_file(str(FIXTURES / f"{case}_reference.safetensors"))
    unet = UNet2DModel.from_pretrained(out, subfolder="unet").eval()  # the plain diffusers loader
    with torch.no_grad():
        got = unet(ref["x"], ref["t"]).sample
    want = ref["reference_output"]
    assert got.shape == want.shape
    eps_error = float((got[:, :3] - want[:, :3]).abs().max()) / float(want[:, :3].std())
    assert eps_error < 1e-4  # measured: 3e-6 (small), 2e-6 (small-conv)


def test_learned_sigma_model_denoises_with_its_epsilon_channels(tmp_path):
    ckpt, flags = _checkpoint("small", tmp_path)
    out = convert_adm(ckpt, tmp_path / "den", flags=json.loads(flags.read_text()))
    den = load_denoiser(out)  # our loader: safetensors only, finite weights, schedule checked
    assert den.unet.config.out_channels == 6 and den.sample_size == 32
    t_star = timestep_for_sigma(den.alphas_cumprod, 0.25)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pixels = one_shot_denoise(den, x, t_star)
        abar = float(den.alphas_cumprod[t_star])
        x_t = math.sqrt(abar) * (2 * x - 1)
        eps = den.unet(x_t, torch.full((2,), t_star)).sample[:, :3]
        by_hand = (((x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1) + 1) / 2
    assert pixels.shape == (2, 3, 32, 32) and torch.allclose(pixels, by_hand, atol=1e-6)
    record = json.loads((out / "adm_flags.json").read_text())
    assert record["source"] == "small.pt" and record["flags"]["learn_sigma"] is True


def test_256_preset_is_the_published_architecture():
    arch = resolve_flags(ADM_PRESETS["256x256_diffusion_uncond"])
    config = unet_config(arch)
    assert arch.channel_mult == (1, 1, 2, 2, 4, 4) and arch.head_channels == 64 and arch.out_channels == 6
    # attention at 32, 16 and 8 px: levels 3, 4, 5 of a 256 px input
    assert arch.attention_levels == (False, False, False, True, True, True)
    assert config["down_block_types"][:3] == ("ResnetDownsampleBlock2D",) * 3
    assert count_parameters(arch) == 552_814_086  # guided-diffusion's 256x256 uncond UNet
    assert set(models_cli.PRESETS) == set(ADM_PRESETS)


def test_schedules_follow_guided_diffusion():
    from fvit_core.models.adm import scheduler_config

    linear = DDPMScheduler(**scheduler_config(resolve_flags(ADM_PRESETS["256x256_diffusion_uncond"])))
    assert timestep_for_sigma(linear.alphas_cumprod, 0.25) == 145 and timestep_for_sigma(linear.alphas_cumprod, 0.5) == 259
    cosine = DDPMScheduler(**scheduler_config(resolve_flags(ADM_PRESETS["cifar10_uncond_50M_500K"])))
    steps = 4000
    abar = lambda t: math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731 (Nichol and Dhariwal)
    for t in (0, 1000, 2500):
        assert float(cosine.alphas_cumprod[t]) == pytest.approx(abar(t + 1) / abar(0), rel=1e-4)


@pytest.mark.parametrize("flags, message", [
    ({"class_cond": True}, "class-conditional models are not supported"),
    ({"image_size": 32, "num_channels": 32, "bogus": 1}, "unknown flag"),
    ({"image_size": 48}, "no default channel_mult"),
    ({"image_size": 32, "num_channels": 32, "channel_mult": "2,2"}, "must start with 1"),
    ({"image_size": 32, "num_channels": 32, "num_res_blocks": "two"}, "num_res_blocks must be a whole number"),
    ({"image_size": 64, "num_channels": 64, "num_heads": 3}, "heads of different widths"),
    ({**ADM_PRESETS["256x256_diffusion_uncond"], "noise_schedule": "sigmoid"}, "noise_schedule must be linear or cosine"),
])
def test_unsupported_flags_are_refused_in_one_line(flags, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_flags(flags)


def test_flags_that_do_not_match_the_checkpoint_are_refused(tmp_path, capsys):
    ckpt, flags = _checkpoint("small", tmp_path)
    wrong = {**json.loads(flags.read_text()), "num_res_blocks": 2}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    assert main(["convert-adm", str(ckpt), str(tmp_path / "out"), "--flags", str(tmp_path / "wrong.json")]) == 2
    err = capsys.readouterr().err
    assert "flags do not match" in err or "do not use" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


class _Payload:  # a pickled object: torch.load(weights_only=True) must refuse to build it
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_with_code_are_not_unpickled(tmp_path, capsys):
    ckpt = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": torch.zeros(1), "x": _Payload()}, ckpt)
    assert main(["convert-adm", str(ckpt), str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "weights-only" in captured.err and "code ran" not in captured.out
