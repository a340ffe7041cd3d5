"""Check fvit_core.models.adm against OpenAI's guided-diffusion UNet on the same random weights.

The reference is not part of this project: fetch openai/guided-diffusion yourself and pass the
folder that holds its ``guided_diffusion`` package. For each case the script builds the
reference network from guided-diffusion flags, draws random weights (every tensor, including the
ones guided-diffusion initialises to zero, so no branch is trivially zero), converts them with
``fvit_core.models.adm.build_unet``, runs both on the same noisy input and timestep, and reports the
largest difference of the epsilon channels relative to the reference's standard deviation.

    python scripts/verify_adm_reference.py --reference /tmp/ref-gd --cases small small-conv 256
    python scripts/verify_adm_reference.py --reference /tmp/ref-gd --cases small small-conv \\
        --fixture tests/fixtures/adm   # writes the test fixture (weights and reference outputs)

Numbers are recorded in docs/REALSIZE.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fvit_core.models.adm import ADM_PRESETS, build_unet, resolve_flags  # noqa: E402

# Small architectures that cover every code path of the converter: ResNet up/down-sampling with
# scale-shift norm, legacy qkv order and learned sigma; convolutional resampling with the new qkv
# order, heads given by count, and plain (additive) timestep conditioning.
CASES: dict[str, dict] = {
    "small": {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,1",
              "attention_resolutions": "16", "num_head_channels": 16, "learn_sigma": True,
              "resblock_updown": True, "use_scale_shift_norm": True},
    "small-conv": {"image_size": 16, "num_channels": 32, "num_res_blocks": 2, "channel_mult": "1,1",
                   "attention_resolutions": "8", "num_heads": 2, "num_head_channels": -1, "learn_sigma": False,
                   "resblock_updown": False, "use_scale_shift_norm": False, "use_new_attention_order": True},
    "256": ADM_PRESETS["256x256_diffusion_uncond"],
}
REFERENCE_ARGS = ("image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma", "class_cond",
                  "attention_resolutions", "num_heads", "num_head_channels", "num_heads_upsample",
                  "use_scale_shift_norm", "dropout", "resblock_updown", "use_new_attention_order")


def reference_model(flags: dict, reference: Path) -> torch.nn.Module:
    sys.path.insert(0, str(reference))
    from guided_diffusion.script_util import create_model, model_and_diffusion_defaults

    args = {k: v for k, v in {**model_and_diffusion_defaults(), **flags}.items() if k in REFERENCE_ARGS}
    return create_model(**args, use_fp16=False).eval()


def randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights: fan-in scaled for matrices and kernels, around 1 for norm scales;
    rounded to float16 values (exact in float32), so the fixture can be stored in half the bytes."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.ndim > 1:
            fan_in = tensor[0].numel()
            value = torch.randn(tensor.shape, generator=g) / fan_in ** 0.5
        elif "norm" in name or name.startswith("out.0") or ".in_layers.0." in name or ".out_layers.0." in name:
            value = 1.0 + 0.1 * torch.randn(tensor.shape, generator=g) if name.endswith("weight") else \
                0.1 * torch.randn(tensor.shape, generator=g)
        else:
            value = 0.1 * torch.randn(tensor.shape, generator=g)
        state[name] = value.half().float()
    model.load_state_dict(state)
    return state


def run_case(name: str, reference: Path, fixture: Path | None) -> dict:
    flags = CASES[name]
    arch = resolve_flags(flags)
    ref = reference_model(flags, reference)
    state = randomise(ref, seed=0)
    ours = build_unet(arch, state)
    g = torch.Generator().manual_seed(1)
    batch = 1 if name == "256" else 2
    x = torch.randn((batch, 3, arch.image_size, arch.image_size), generator=g)
    t = torch.tensor([145, 600][:batch])
    with torch.no_grad():
        start = time.perf_counter()
        want = ref(x, t)
        ref_s = time.perf_counter() - start
        start = time.perf_counter()
        got = ours(x, t).sample
        ours_s = time.perf_counter() - start
    eps_want, eps_got = want[:, :3], got[:, :3]
    scale = float(eps_want.std())
    result = {"case": name, "flags": flags, "parameters": sum(p.numel() for p in ours.parameters()),
              "eps_std": scale, "max_abs_diff": float((eps_got - eps_want).abs().max()),
              "max_rel_diff": float((eps_got - eps_want).abs().max()) / scale,
              "all_channels_max_abs_diff": float((got - want).abs().max()),
              "reference_seconds": ref_s, "ours_seconds": ours_s}
    if fixture is not None:
        from safetensors.torch import save_file

        fixture.mkdir(parents=True, exist_ok=True)
        save_file({k: v.half().contiguous() for k, v in state.items()}, str(fixture / f"{name}_weights.safetensors"))
        save_file({"x": x, "t": t, "reference_output": want.contiguous()}, str(fixture / f"{name}_reference.safetensors"))
        (fixture / f"{name}_flags.json").write_text(json.dumps(flags, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="folder holding guided_diffusion/")
    parser.add_argument("--cases", nargs="+", default=["small", "small-conv"], choices=sorted(CASES))
    parser.add_argument("--fixture", type=Path, help="write weights and reference outputs of the cases here")
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.cases:
        print(json.dumps(run_case(name, args.reference, args.fixture)), flush=True)


if __name__ == "__main__":
    main()
