"""Convert OpenAI's guided-diffusion / improved-diffusion UNet checkpoints (ADM) to diffusers.

Carlini et al.'s DDS, and the FViT paper after it, denoise ImageNet images with OpenAI's
unconditional 256x256 guided-diffusion model (``256x256_diffusion_uncond.pt``). That file is a
plain PyTorch state dict of guided-diffusion's own ``UNetModel``. This module rebuilds the same
network from diffusers' own blocks (``UNet2DModel``: scale-shift ``ResnetBlock2D``, ResNet
up/down-sampling blocks, ``Attention`` with a fixed head width) and copies the weights over,
so the result loads with ``UNet2DModel.from_pretrained(OUT, subfolder="unet")`` and with
``--denoiser OUT``.

What maps to what (ADM name -> diffusers name):
- ``time_embed.{0,2}`` -> ``time_embedding.linear_{1,2}``; the sinusoidal embedding is diffusers'
  ``Timesteps`` with ``flip_sin_to_cos=True, freq_shift=0`` ([cos, sin], as ADM);
- ``input_blocks.0.0`` -> ``conv_in``; each level's ResBlocks (and AttentionBlocks) ->
  ``down_blocks.L.resnets.i`` (``.attentions.i``); the level's downsampling block ->
  ``down_blocks.L.downsamplers.0`` (a ResnetBlock2D with ``down=True`` for
  ``resblock_updown``, else a strided convolution);
- ``middle_block.{0,1,2}`` -> ``mid_block.resnets.0``, ``mid_block.attentions.0``,
  ``mid_block.resnets.1``; ``output_blocks`` -> ``up_blocks`` in the same way; ``out.{0,2}`` ->
  ``conv_norm_out``, ``conv_out``;
- ResBlock: ``in_layers.0/2`` -> ``norm1``/``conv1``, ``emb_layers.1`` -> ``time_emb_proj``,
  ``out_layers.0/3`` -> ``norm2``/``conv2``, ``skip_connection`` -> ``conv_shortcut``;
- AttentionBlock: ``norm`` -> ``group_norm``; the 1x1 ``qkv`` convolution is split into ``to_q``,
  ``to_k``, ``to_v`` (per head [q, k, v] in the legacy order, [all q, all k, all v] in the new
  one); ``proj_out`` -> ``to_out.0``.

Learned-sigma models output 6 channels: epsilon, then the variance interpolation; DDS uses the
first 3 (denoise.py). Checkpoints are read with ``torch.load(weights_only=True)``: no code is
unpickled. Agreement with the reference implementation is recorded in docs/REALSIZE.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from fvit_core.models import ModelLoadError, check_finite_weights

# Flags of guided-diffusion's script_util.create_model_and_diffusion that shape the weights or
# the noise schedule, with guided-diffusion's defaults. use_fp16 and use_checkpoint are accepted
# and ignored: they change how the model runs, not what it computes from its weights.
ADM_FLAG_DEFAULTS: dict[str, Any] = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
    "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.0,
    "class_cond": False, "use_scale_shift_norm": True, "resblock_updown": False, "use_new_attention_order": False,
    "learn_sigma": False, "diffusion_steps": 1000, "noise_schedule": "linear", "use_fp16": False,
    "use_checkpoint": False,
}

# Flag sets of published checkpoints (their READMEs' MODEL_FLAGS and DIFFUSION_FLAGS).
ADM_PRESETS: dict[str, dict[str, Any]] = {
    # openai/guided-diffusion: the unconditional ImageNet 256x256 model Carlini et al. use.
    "256x256_diffusion_uncond": {
        "attention_resolutions": "32,16,8", "class_cond": False, "diffusion_steps": 1000, "image_size": 256,
        "learn_sigma": True, "noise_schedule": "linear", "num_channels": 256, "num_head_channels": 64,
        "num_res_blocks": 2, "resblock_updown": True, "use_fp16": True, "use_scale_shift_norm": True,
    },
    # openai/improved-diffusion: CIFAR-10, unconditional, L_hybrid, cosine schedule.
    "cifar10_uncond_50M_500K": {
        "image_size": 32, "num_channels": 128, "num_res_blocks": 3, "learn_sigma": True, "dropout": 0.3,
        "diffusion_steps": 4000, "noise_schedule": "cosine", "resblock_updown": False,
    },
}
DEFAULT_PRESET = "256x256_diffusion_uncond"

# guided-diffusion's (and improved-diffusion's, for 32 px) channel multipliers by image size.
_CHANNEL_MULT: dict[int, tuple[int, ...]] = {
    256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2),
}


@dataclass(frozen=True)
class ADMArchitecture:
    """The ADM network a flag set describes (resolved: channel multipliers, attention levels)."""

    image_size: int
    model_channels: int
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    attention_levels: tuple[bool, ...]  # per level: attention after each ResBlock
    head_channels: int  # channels per attention head (the same at every attention level)
    out_channels: int
    use_scale_shift_norm: bool
    resblock_updown: bool
    new_attention_order: bool
    dropout: float
    diffusion_steps: int
    noise_schedule: str

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)


def _flag_error(message: str) -> ModelLoadError:
    return ModelLoadError(f"ADM flags: {message}")


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _flag_error(f"{name} must be true or false, got {value!r}")


# Upper bounds of the flags (issue 26: 100,000 channels or res-blocks, 10^9 steps allocated GBs
# before failing): generous for every published ADM model (ImageNet 512x512 has 256 channels,
# 2 res-blocks, 1,000 steps; improved-diffusion 4,000 steps).
FLAG_LIMITS: dict[str, int] = {
    "image_size": 1024, "num_channels": 1024, "num_res_blocks": 8, "num_heads": 64, "num_heads_upsample": 64,
    "num_head_channels": 1024, "diffusion_steps": 100_000, "channel_mult": 16, "attention_resolutions": 1024,
}
MAX_LEVELS = 8


def _as_int(value: Any, name: str, low: int) -> int:
    """A whole number in low..FLAG_LIMITS[name], from an int or its decimal text (flags come
    from JSON or a shell)."""
    high = FLAG_LIMITS.get(name, 1 << 30)
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.lstrip("-").isdigit() and len(text) <= 12:
        text = int(text)
    if isinstance(text, bool) or not isinstance(text, int) or not low <= text <= high:
        shown = repr(value) if len(repr(value)) <= 24 else f"a value of {len(repr(value))} characters"
        raise _flag_error(f"{name} must be a whole number in {low}..{high:,}, got {shown}")
    return text


def _int_list(value: Any, name: str) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        if len(items) > MAX_LEVELS or any(len(str(v).strip()) > 12 for v in items):
            raise ValueError
        numbers = tuple(int(str(v).strip()) for v in items)
    except (TypeError, ValueError):
        shown = repr(value) if len(repr(value)) <= 40 else f"a value of {len(repr(value))} characters"
        raise _flag_error(f"{name} must be at most {MAX_LEVELS} comma-separated whole numbers, got {shown}") from None
    high = FLAG_LIMITS.get(name, 1 << 30)
    if not numbers or min(numbers) < 1 or max(numbers) > high:
        raise _flag_error(f"{name} must be whole numbers in 1..{high:,}, got {value!r}")
    return numbers


def _as_dropout(value: Any) -> float:
    """A dropout probability in [0, 1): a number (or its text), finite (NaN would be written as
    invalid JSON)."""
    try:
        number = float(value) if not isinstance(value, bool) and len(str(value)) <= 32 else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number < 1.0:
        raise _flag_error(f"dropout must be a number in [0, 1), got {value!r}"[:120])
    return number


def resolve_flags(flags: Mapping[str, Any]) -> ADMArchitecture:
    """Check guided-diffusion flags and resolve them to an :class:`ADMArchitecture`.

    Raises ModelLoadError for unknown flags and for what this converter cannot express:
    class-conditional models (DDS needs an unconditional denoiser), a first channel multiplier
    other than 1, and per-level head counts that differ in width (num_heads with varying channels).
    """
    unknown = sorted(set(flags) - set(ADM_FLAG_DEFAULTS))
    if unknown:
        raise _flag_error(f"unknown flag(s) {', '.join(unknown)}; known: {', '.join(sorted(ADM_FLAG_DEFAULTS))}")
    f = {**ADM_FLAG_DEFAULTS, **flags}
    if _as_bool(f["class_cond"], "class_cond"):
        raise _flag_error("class_cond=true: class-conditional models are not supported; DDS needs an "
                          "unconditional denoiser such as 256x256_diffusion_uncond")
    size = _as_int(f["image_size"], "image_size", 8)
    channels = _as_int(f["num_channels"], "num_channels", 1)
    if f["channel_mult"] in ("", None):
        if size not in _CHANNEL_MULT:
            raise _flag_error(f"no default channel_mult for image_size {size}; give channel_mult")
        mult = _CHANNEL_MULT[size]
    else:
        mult = _int_list(f["channel_mult"], "channel_mult")
    if mult[0] != 1:
        raise _flag_error(f"channel_mult must start with 1 (the timestep embedding width is num_channels), got {mult}")
    attention_ds = {size // res for res in _int_list(f["attention_resolutions"], "attention_resolutions")}
    levels = tuple(2**level in attention_ds for level in range(len(mult)))
    attn_channels = {channels * m for m, on in zip(mult, levels) if on} | {channels * mult[-1]}  # + middle block
    head_channels = _as_int(f["num_head_channels"], "num_head_channels", -1)
    if head_channels == 0:
        raise _flag_error("num_head_channels must be -1 (use num_heads) or positive")
    if head_channels == -1:
        heads = _as_int(f["num_heads"], "num_heads", 1)
        up_heads = _as_int(f["num_heads_upsample"], "num_heads_upsample", -1)
        if up_heads not in (-1, heads):
            raise _flag_error("num_heads_upsample differing from num_heads is not supported")
        widths = {c // heads for c in attn_channels}
        if len(widths) != 1 or any(c % heads for c in attn_channels):
            raise _flag_error(f"num_heads={heads} gives heads of different widths at channels "
                              f"{sorted(attn_channels)}; diffusers' UNet2DModel needs one head width")
        head_channels = widths.pop()
    if any(c % head_channels for c in attn_channels):
        raise _flag_error(f"num_head_channels={head_channels} does not divide the attention channels {sorted(attn_channels)}")
    schedule = str(f["noise_schedule"])
    if schedule not in ("linear", "cosine"):
        raise _flag_error(f"noise_schedule must be linear or cosine, got {schedule!r}")
    return ADMArchitecture(
        image_size=size, model_channels=channels, num_res_blocks=_as_int(f["num_res_blocks"], "num_res_blocks", 1),
        channel_mult=mult, attention_levels=levels, head_channels=head_channels,
        out_channels=6 if _as_bool(f["learn_sigma"], "learn_sigma") else 3,
        use_scale_shift_norm=_as_bool(f["use_scale_shift_norm"], "use_scale_shift_norm"),
        resblock_updown=_as_bool(f["resblock_updown"], "resblock_updown"),
        new_attention_order=_as_bool(f["use_new_attention_order"], "use_new_attention_order"),
        dropout=_as_dropout(f["dropout"]), diffusion_steps=_as_int(f["diffusion_steps"], "diffusion_steps", 2),
        noise_schedule=schedule,
    )


def unet_config(arch: ADMArchitecture) -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments that build the same network from diffusers' blocks."""
    down, up = [], []
    for on in arch.attention_levels:
        down.append("AttnDownBlock2D" if on else ("ResnetDownsampleBlock2D" if arch.resblock_updown else "DownBlock2D"))
    for on in reversed(arch.attention_levels):
        up.append("AttnUpBlock2D" if on else ("ResnetUpsampleBlock2D" if arch.resblock_updown else "UpBlock2D"))
    return {
        "sample_size": arch.image_size, "in_channels": 3, "out_channels": arch.out_channels,
        "flip_sin_to_cos": True, "freq_shift": 0, "down_block_types": tuple(down), "up_block_types": tuple(up),
        "block_out_channels": arch.level_channels, "layers_per_block": arch.num_res_blocks,
        "downsample_type": "resnet" if arch.resblock_updown else "conv",
        "upsample_type": "resnet" if arch.resblock_updown else "conv",
        "dropout": arch.dropout, "act_fn": "silu", "attention_head_dim": arch.head_channels,
        "norm_num_groups": 32, "norm_eps": 1e-5,  # ADM's GroupNorm32: 32 groups, torch's default eps
        # The middle block's attention normalises too (diffusers leaves it out under scale-shift).
        "attn_norm_num_groups": 32,
        "resnet_time_scale_shift": "scale_shift" if arch.use_scale_shift_norm else "default",
        "add_attention": True,
    }


def _resblock(src: str, dst: str) -> list[tuple[str, str]]:
    pairs = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
             ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]
    return [(f"{src}.{a}", f"{dst}.{b}") for a, b in pairs]


def _module_map(arch: ADMArchitecture) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(parameter-holding module pairs (ADM prefix, diffusers prefix), attention block pairs)."""
    modules = [("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
               ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")]
    attentions: list[tuple[str, str]] = []
    block = 1
    last = len(arch.channel_mult) - 1
    for level, attn in enumerate(arch.attention_levels):
        for i in range(arch.num_res_blocks):
            modules += _resblock(f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{i}")
            if attn:
                attentions.append((f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{i}"))
            block += 1
        if level != last:
            if arch.resblock_updown:
                modules += _resblock(f"input_blocks.{block}.0", f"down_blocks.{level}.downsamplers.0")
            else:
                modules.append((f"input_blocks.{block}.0.op", f"down_blocks.{level}.downsamplers.0.conv"))
            block += 1
    modules += _resblock("middle_block.0", "mid_block.resnets.0") + _resblock("middle_block.2", "mid_block.resnets.1")
    attentions.append(("middle_block.1", "mid_block.attentions.0"))
    block = 0
    for up_index, level in enumerate(reversed(range(len(arch.channel_mult)))):
        attn = arch.attention_levels[level]
        for i in range(arch.num_res_blocks + 1):
            modules += _resblock(f"output_blocks.{block}.0", f"up_blocks.{up_index}.resnets.{i}")
            if attn:
                attentions.append((f"output_blocks.{block}.1", f"up_blocks.{up_index}.attentions.{i}"))
            if level and i == arch.num_res_blocks:
                sub = 2 if attn else 1
                if arch.resblock_updown:
                    modules += _resblock(f"output_blocks.{block}.{sub}", f"up_blocks.{up_index}.upsamplers.0")
                else:
                    modules.append((f"output_blocks.{block}.{sub}.conv", f"up_blocks.{up_index}.upsamplers.0.conv"))
            block += 1
    return modules, attentions


def _split_qkv(weight: torch.Tensor, channels: int, head_channels: int, new_order: bool) -> list[torch.Tensor]:
    """ADM's fused 1x1 qkv convolution (3C, C[, 1]) -> [q, k, v] rows for diffusers' to_q/to_k/to_v,
    whose heads are consecutive blocks of ``head_channels`` rows."""
    heads = channels // head_channels
    rest = weight.shape[1:]
    if new_order:  # QKVAttention: qkv.chunk(3) -> [all q | all k | all v], heads inside each
        return list(weight.reshape(3, channels, *rest).unbind(0))
    # QKVAttentionLegacy: per head [q_h | k_h | v_h]
    per_head = weight.reshape(heads, 3, head_channels, *rest)
    return [per_head[:, j].reshape(channels, *rest) for j in range(3)]


def convert_state_dict(state: Mapping[str, torch.Tensor], arch: ADMArchitecture) -> dict[str, torch.Tensor]:
    """The diffusers ``UNet2DModel`` state dict for ADM weights ``state`` (float32, CPU).

    Raises ModelLoadError when a tensor the architecture needs is missing, when the checkpoint
    holds tensors the architecture does not use (wrong flags), or when shapes disagree.
    """
    if any(key.startswith("label_emb.") for key in state):
        raise ModelLoadError("the checkpoint is class-conditional (it has label_emb): not supported for DDS")
    modules, attentions = _module_map(arch)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ModelLoadError(f"the checkpoint has no tensor {key!r}: its flags do not match the ones given "
                                 "(check --preset / --flags)")
        used.add(key)
        return state[key].detach().to("cpu", torch.float32)

    for src, dst in modules:
        for suffix in ("weight", "bias"):
            key = f"{src}.{suffix}"
            if key in state:
                out[f"{dst}.{suffix}"] = take(key)
    for src, dst in attentions:
        for suffix in ("weight", "bias"):
            out[f"{dst}.group_norm.{suffix}"] = take(f"{src}.norm.{suffix}")
        channels = int(state[f"{src}.qkv.weight"].shape[1]) if f"{src}.qkv.weight" in state else 0
        q, k, v = _split_qkv(take(f"{src}.qkv.weight"), channels, arch.head_channels, arch.new_attention_order)
        qb, kb, vb = _split_qkv(take(f"{src}.qkv.bias"), channels, arch.head_channels, arch.new_attention_order)
        for name, w, b in (("to_q", q, qb), ("to_k", k, kb), ("to_v", v, vb)):
            out[f"{dst}.{name}.weight"], out[f"{dst}.{name}.bias"] = w.reshape(channels, channels), b
        out[f"{dst}.to_out.0.weight"] = take(f"{src}.proj_out.weight").reshape(channels, channels)
        out[f"{dst}.to_out.0.bias"] = take(f"{src}.proj_out.bias")
    unused = sorted(set(state) - used)
    if unused:
        raise ModelLoadError(f"the checkpoint holds {len(unused)} tensor(s) these flags do not use (e.g. "
                             f"{', '.join(unused[:3])}): its flags differ from the ones given (check --preset / --flags)")
    return out


def build_unet(arch: ADMArchitecture, state: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """A diffusers ``UNet2DModel`` of ``arch``, with converted ADM weights when ``state`` is given."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(**unet_config(arch))
    if state is not None:
        converted = convert_state_dict(state, arch)
        expected = unet.state_dict()
        missing = sorted(set(expected) - set(converted))
        if missing:
            raise ModelLoadError(f"conversion left {len(missing)} diffusers tensor(s) unset (e.g. {missing[0]})")
        for key, tensor in converted.items():
            if tuple(expected[key].shape) != tuple(tensor.shape):
                raise ModelLoadError(f"shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, network "
                                     f"{tuple(expected[key].shape)}: the flags do not match the checkpoint")
        unet.load_state_dict(converted, strict=True)
    return unet.eval()


def scheduler_config(arch: ADMArchitecture) -> dict[str, Any]:
    """``DDPMScheduler`` arguments for ADM's noise schedule.

    guided-diffusion's linear schedule scales beta 1e-4 .. 0.02 by 1000 / diffusion_steps; its
    cosine schedule is diffusers' ``squaredcos_cap_v2`` (Nichol and Dhariwal 2021, max beta 0.999).
    """
    config: dict[str, Any] = {"num_train_timesteps": arch.diffusion_steps, "clip_sample": True,
                              "prediction_type": "epsilon",
                              "variance_type": "learned_range" if arch.out_channels == 6 else "fixed_small"}
    if arch.noise_schedule == "linear":
        scale = 1000.0 / arch.diffusion_steps
        config.update(beta_schedule="linear", beta_start=scale * 1e-4, beta_end=scale * 0.02)
    else:
        config.update(beta_schedule="squaredcos_cap_v2")
    return config


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """ADM weights from a ``.pt`` file, read with ``torch.load(weights_only=True)`` (tensors
    only: no code is unpickled), or from a ``.safetensors`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError for refused or broken files
        text = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"cannot read {path} as a weights-only state dict: {text}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} is not a state dict of tensors (as guided-diffusion saves its models)")
    for key, tensor in state.items():  # what a converter would otherwise mangle or trip over later
        if not isinstance(key, str):
            raise ModelLoadError(f"{path}: tensor names must be text, got {type(key).__name__} {key!r}"[:200])
        if tensor.layout != torch.strided or tensor.is_meta:
            raise ModelLoadError(f"{path}: {key} is a {'meta' if tensor.is_meta else 'sparse'} tensor; a checkpoint "
                                 "holds dense weights")
        if not tensor.is_floating_point():
            raise ModelLoadError(f"{path}: {key} is {str(tensor.dtype).replace('torch.', '')}; a weight is a real "
                                 "floating-point tensor (a complex one would lose its imaginary part)")
    return state


def check_checkpoint_size(path: str | os.PathLike, arch: "ADMArchitecture") -> None:
    """Before reading: a .pt file is a zip archive; its members' inflated sizes must not exceed
    what the architecture's weights can take (float32, plus 10% and 1 MB for the pickle), so a
    small compressed file cannot inflate to GBs (issue 26: 7.7 MB -> 6.8 GB)."""
    import zipfile

    path = Path(path).expanduser()
    expected = 4 * count_parameters(arch)
    limit = int(expected * 1.1) + (1 << 20)
    if path.suffix != ".safetensors" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
        if inflated > limit:
            raise ModelLoadError(f"{path} inflates to {inflated:,} bytes, but these flags' network has "
                                 f"{expected:,} bytes of float32 weights; refused before reading (check --preset / --flags)")
    elif path.stat().st_size > limit:
        raise ModelLoadError(f"{path} is {path.stat().st_size:,} bytes, more than these flags' network can hold "
                             f"({expected:,} bytes of float32 weights); check --preset / --flags")


def convert_adm(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
                flags: Mapping[str, Any] | None = None, preset: str | None = DEFAULT_PRESET) -> Path:
    """Convert an ADM checkpoint into a diffusers folder ``out_dir`` (``unet/`` safetensors +
    config, ``scheduler/``, and ``adm_flags.json`` recording where it came from).

    The architecture comes from ``flags`` (guided-diffusion's flag names; those not given take
    guided-diffusion's defaults) when they are given, else from the named ``preset``. Returns
    ``out_dir``.
    """
    from diffusers import DDPMScheduler

    if flags is None and preset not in ADM_PRESETS:
        raise ModelLoadError(f"unknown preset {preset!r}; known: {', '.join(ADM_PRESETS)}")
    merged = dict(flags) if flags is not None else dict(ADM_PRESETS[preset])  # type: ignore[index]
    preset = None if flags is not None else preset
    arch = resolve_flags(merged)
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"{out} exists and is not an empty folder; choose a new folder")
    if not Path(checkpoint).expanduser().is_file():
        raise ModelLoadError(f"checkpoint not found: {checkpoint}")
    check_checkpoint_size(checkpoint, arch)
    state = read_checkpoint(checkpoint)
    _check_shapes(state, arch)  # on the meta device: a wrong checkpoint never builds the real network
    unet = build_unet(arch, state)
    check_finite_weights(unet, f"converted {checkpoint}")
    # Everything goes into a temporary folder beside OUT_DIR, renamed at the end: a failure or a
    # kill never leaves a half-written model that --denoiser would try to load.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        unet.save_pretrained(staging / "unet", safe_serialization=True)
        DDPMScheduler(**scheduler_config(arch)).save_pretrained(staging / "scheduler")
        record = {"source": Path(checkpoint).name, "preset": preset, "flags": merged, "architecture": asdict(arch)}
        (staging / "adm_flags.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_shapes(state: Mapping[str, torch.Tensor], arch: "ADMArchitecture") -> None:
    """The converted checkpoint's tensor names and shapes against the network built on the meta
    device (no memory): the same refusals as build_unet, before 552M parameters are allocated."""
    with torch.device("meta"):
        expected = {key: tuple(t.shape) for key, t in build_unet(arch).state_dict().items()}
    converted = convert_state_dict(state, arch)
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ModelLoadError(f"conversion left {len(missing)} diffusers tensor(s) unset (e.g. {missing[0]})")
    for key, tensor in converted.items():
        if expected.get(key) != tuple(tensor.shape):
            raise ModelLoadError(f"shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, network "
                                 f"{expected.get(key)}: the flags do not match the checkpoint")


def count_parameters(arch: ADMArchitecture) -> int:
    """Parameters of the network (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        unet = build_unet(arch)
    return sum(math.prod(p.shape) for p in unet.parameters())
