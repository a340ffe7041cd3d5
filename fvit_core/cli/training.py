"""Command-line front for training and model-card evaluation (sub-commands of ``fvit``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from fvit_core.errors import SettingError


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per dataclass field (dashes for underscores); the field's default is kept."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict = {"dest": f.name, "required": required}
        if not required:
            kwargs["default"] = argparse.SUPPRESS
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else hint
        if typing.get_origin(base) is tuple:
            kwargs.update(type=lambda s: tuple(float(v) for v in s.split(",")), metavar="A,B,...")
        elif base is dict or typing.get_origin(base) is dict:
            kwargs.update(type=json.loads, metavar="JSON")
        elif base in (int, float, str):
            kwargs["type"] = base
        parser.add_argument(flag, **kwargs)


def build_config(cls: type, ns: argparse.Namespace, config_file: str | None):
    """Dataclass from a JSON config file (optional) overridden by explicit flags."""
    values: dict = {}
    if config_file:
        try:
            data = json.loads(Path(config_file).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SettingError(f"--config {config_file}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise SettingError(f"--config {config_file}: must hold a JSON object of name: value pairs")
        values.update(data)
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return cls(**{k: v for k, v in values.items() if k in names})


def register(sub: argparse._SubParsersAction) -> None:
    from fvit_core.training.train_classifier import ClassifierTrainConfig
    from fvit_core.training.train_denoiser import DenoiserTrainConfig

    for name, cls, help_text in (
        ("train-classifier", ClassifierTrainConfig, "train or fine-tune the ViT classifier (resumable)"),
        ("train-denoiser", DenoiserTrainConfig, "train the DDPM denoiser (resumable)"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", dest="config_file", help="JSON file with the same fields; flags override it")
        add_dataclass_arguments(p, cls)
        p.set_defaults(handler=_train_handler(name, cls))
    p = sub.add_parser("evaluate-models", help="measure a pair's model-card numbers on a labelled image folder")
    p.add_argument("--data", required=True, help="image folder root/<class>/*")
    p.add_argument("--classifier", required=True)
    p.add_argument("--denoiser", required=True)
    p.add_argument("--sigmas", default="0.12,0.25,0.5")
    p.add_argument("--n-dds-images", type=int, default=500)
    p.add_argument("--dds-samples", type=int, default=100)
    p.add_argument("--certify-images", type=int, default=200)
    p.add_argument("--certify-n", type=int, default=1000)
    p.add_argument("--certify-sigma", type=float, default=0.25)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--parts", default="clean,psnr,dds,certify",
                   help="which measurements to run (comma-separated subset of clean,psnr,dds,certify)")
    p.add_argument("--json", required=True, help="where to write the measured numbers (updated after each part)")
    p.set_defaults(handler=_evaluate_handler)


def _train_handler(name: str, cls: type):
    def run(ns: argparse.Namespace) -> int:
        from fvit_core.training.train_classifier import train_classifier
        from fvit_core.training.train_denoiser import train_denoiser

        cfg = build_config(cls, ns, ns.config_file)
        out = (train_classifier if name == "train-classifier" else train_denoiser)(cfg)
        print(f"saved {out}")
        return 0

    return run


def _evaluate_handler(ns: argparse.Namespace) -> int:
    import torch

    from fvit_core.models import load_classifier, load_denoiser
    from fvit_core.training.evaluate import certify_pair, evaluate_pair
    from fvit_core.training.loop import resolve_device, write_json

    device = resolve_device(ns.device)
    clf = load_classifier(ns.classifier).to(device)
    den = load_denoiser(ns.denoiser).to(device)
    sigmas = tuple(float(s) for s in ns.sigmas.split(","))
    parts = tuple(p.strip() for p in ns.parts.split(","))
    partial: dict = {"device": str(device), "data": ns.data, "parts": list(parts)}

    def report(name: str, value) -> None:  # keep what is measured even if the run is stopped later
        partial[name] = value
        write_json(Path(ns.json), partial)

    with torch.inference_mode():
        ev = evaluate_pair(clf, den, ns.data, sigmas=sigmas, n_dds_images=ns.n_dds_images,
                           dds_samples=ns.dds_samples, batch_size=ns.batch_size, report=report, parts=parts)
        measured = dataclasses.asdict(ev)
        skipped = {"clean": ("clean_accuracy", "n_clean"), "psnr": ("psnr",), "dds": ("dds_accuracy", "n_dds")}
        for part, fields in skipped.items():
            for name in fields if part not in parts else ():
                measured.pop(name)
        result = {**partial, **measured}
        if ns.certify_images > 0 and "certify" in parts:
            result["certify"] = certify_pair(clf, den, ns.data, sigma=ns.certify_sigma, n=ns.certify_n,
                                                   n_images=ns.certify_images, batch_size=ns.batch_size, report=report)
    result["device"] = str(device)
    write_json(Path(ns.json), result)
    print(json.dumps(result, indent=2))
    return 0
