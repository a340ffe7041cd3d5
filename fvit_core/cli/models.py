"""Putting real-size models in place: ``fvit convert-adm CHECKPOINT OUT_DIR`` (a guided-diffusion
checkpoint as a diffusers folder) and ``fvit save-classifier NAME OUT_DIR`` (a timm model with hub
weights as a local classifier folder). docs/REALSIZE.md walks through both."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fvit_core.errors import InputError, SettingError

PRESETS = ("256x256_diffusion_uncond", "cifar10_uncond_50M_500K")  # fvit_core.models.adm.ADM_PRESETS (kept light)


def _command(sub: argparse._SubParsersAction, name: str, help_text: str, description: str,
             *positionals: tuple[str, str]) -> argparse.ArgumentParser:
    """A sub-command with its one-line help, its description and its positional arguments."""
    p = sub.add_parser(name, help=help_text, description=description)
    for dest, arg_help in positionals:
        p.add_argument(dest, help=arg_help)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    _register_save_classifier(sub)
    p = _command(sub, "convert-adm",
                 "convert an OpenAI guided-diffusion / improved-diffusion UNet checkpoint to diffusers",
                 "Convert an OpenAI guided-diffusion (ADM) UNet checkpoint into a diffusers folder (unet/ safetensors + "
                 "scheduler/) that --denoiser OUT_DIR loads. The checkpoint is read with torch.load(weights_only=True): "
                 "no code is unpickled.",
                 ("checkpoint", "the .pt file, e.g. 256x256_diffusion_uncond.pt"),
                 ("out_dir", "new folder for the diffusers model"))
    p.add_argument("--preset", default="256x256_diffusion_uncond", choices=PRESETS,
                   help="the published model's flags (default: 256x256_diffusion_uncond)")
    p.add_argument("--flags", type=Path, metavar="FLAGS.json",
                   help="guided-diffusion's own flags as JSON (image_size, num_channels, num_res_blocks, "
                        "attention_resolutions, num_head_channels, ...); replaces --preset")
    p.set_defaults(handler=run)


def _read_flags(path: Path) -> dict:
    if not path.is_file() or path.stat().st_size > 64 * 1024:
        raise InputError(f"--flags {path}: not a regular file of at most 64 KiB")
    try:
        flags = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--flags {path}: not valid JSON ({exc})") from exc
    if not isinstance(flags, dict):
        raise InputError(f"--flags {path}: must hold a JSON object of flag: value pairs")
    return flags


def run(ns: argparse.Namespace) -> int:
    from fvit_core.models.adm import convert_adm, count_parameters, resolve_flags

    flags = _read_flags(ns.flags) if ns.flags else None
    out = convert_adm(ns.checkpoint, ns.out_dir, flags=flags, preset=None if flags is not None else ns.preset)
    record = json.loads((out / "adm_flags.json").read_text())
    arch = resolve_flags(record["flags"])
    print(f"wrote {out} ({count_parameters(arch) / 1e6:.1f}M parameters, {arch.image_size}x{arch.image_size}, "
          f"{arch.out_channels} output channels); use it with --denoiser {out}")
    return 0


def _register_save_classifier(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "save-classifier",
                 "download a timm ViT's hub weights once and save it as a local classifier folder",
                 "Create timm model NAME with its hub weights and save it as a classifier folder (config.json + "
                 "model.safetensors, with its class names) that --classifier OUT_DIR and the dashboard load offline. "
                 "Needs --allow-download.",
                 ("name", "timm model name, e.g. vit_base_patch16_224.augreg2_in21k_ft_in1k"),
                 ("out_dir", "new folder, e.g. $FVIT_MODELS_DIR/imagenet-vit-b16"))
    p.add_argument("--allow-download", dest="allow_download", action="store_true",
                   help="allow the hub download (required: without it nothing is fetched)")
    p.set_defaults(handler=run_save_classifier)


def run_save_classifier(ns: argparse.Namespace) -> int:
    from fvit_core.models import load_classifier, save_classifier

    out = Path(ns.out_dir).expanduser()
    if not ns.allow_download:
        raise SettingError("saving hub weights needs --allow-download (nothing is downloaded without it)")
    if out.exists() and any(out.iterdir()):
        raise SettingError(f"{out} exists and is not empty; choose a new folder")
    model = load_classifier(ns.name, pretrained=True)
    save_classifier(model, out, model_args={})
    print(f"wrote {out} ({model.num_classes} classes, {model.img_size[0]}x{model.img_size[1]} px, "
          f"{model.num_patches} patches); use it with --classifier {out}")
    return 0
