"""``fvit analyze IMAGE``: one image, vanilla ViT vs FViT, JSON (and figures) out."""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

from fvit_core.errors import SettingError


# A number on the command line is at most this many characters: enough for any float in full
# and any fraction of them, and a 5,000-digit fraction never reaches Fraction (whose float
# conversion overflows with a traceback) or int (which refuses more than 4,300 digits).
MAX_NUMBER_TEXT = 64
_NUMERIC = set("0123456789+-./eE_")


def _too_long(text: str) -> str | None:
    """The reason ``text`` is refused as a number for its length, or None."""
    if len(text) <= MAX_NUMBER_TEXT:
        return None
    return (f"{text[:12]}... is {len(text):,} characters long; a number here has at most {MAX_NUMBER_TEXT} "
            "(examples: 0.03, 8/255)")


def parse_number(text: str) -> float:
    """A float that may be written as a fraction: '8/255' -> 0.03137..."""
    text = text.strip()
    reason = _too_long(text)
    if reason:
        raise argparse.ArgumentTypeError(f"not a number: {reason}")
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (examples: 0.03, 8/255)") from exc


# flag -> (AnalysisConfig field, type, help). Flag names are part of the interface: keep them.
ANALYZE_FLAGS: dict[str, tuple[str, object, str]] = {
    "--model": ("model", str, "named model pair (default: the shipped CIFAR-10 pair)"),
    "--classifier": ("classifier", str, "classifier: a folder (config.json + model.safetensors) or a timm name"),
    "--denoiser": ("denoiser", str, "denoiser: a folder (unet/ + scheduler/) or a hub id such as google/ddpm-cifar10-32"),
    "--attack": ("attack", str, "attack name from the registry (fvit attacks lists them) or 'none'"),
    "--eps": ("eps", parse_number, "attack budget in pixel units, e.g. 8/255 (Linf) or 0.5 (L2)"),
    "--steps": ("steps", int, "attack iterations"),
    "--method": ("method", str, "explanation: raw | rollout | grad_rollout | gradcam | transformer_attribution | "
                                "lrp | partial_lrp | attr_rollout"),
    "--head-fusion": ("head_fusion", str, "mean | max | min over heads"),
    "--target": ("target", str, "the class the explanation explains: a class name or index (default: the "
                                "predicted class); raw attention and rollout do not depend on it"),
    "--sigma": ("sigma", parse_number, "smoothing noise std in pixel units (e.g. 0.25)"),
    "--n-samples": ("n_samples", int, "noise samples per image for the FViT"),
    "--sampling": ("sampling", str, "how the noise draws are made: independent | antithetic (pairs e, -e: "
                                    "lower variance; n-samples even)"),
    "--k": ("k", int, "number of top-k focal patches"),
    "--beta": ("beta", float, "required top-k overlap for the top-k certificate, in (0, 1]"),
    "--mode": ("mode", str, "smoothing: dds | rs | denoise-only | multistep"),
    "--seed": ("seed", int, "random seed (same seed, same JSON)"),
    "--device": ("device", str, "cpu, cuda, cuda:1, ..."),
    "--batch-size": ("batch_size", int, "samples per forward pass"),
    "--image-mode": ("image_mode", str, "resize | center_crop | pad (letterbox: black bars, nothing cut) to the classifier's input size"),
    "--precision": ("precision", str, "DDS networks in auto | float32 | bfloat16 (auto: bfloat16 where native)"),
    "--noise-floor-estimator": ("noise_floor_estimator", str,
                                "bootstrap (from the clean samples) | independent (a second clean estimate)"),
    "--sensitivity-samples": ("sensitivity_samples", int,
                              "neighbourhood sensitivity: M random perturbations (0 = off, at most 64; the FViT "
                              "smooths each with --n-samples draws)"),
    "--sensitivity-radius": ("sensitivity_radius", parse_number, "radius of the sensitivity ball, pixel units (0.02)"),
    "--sensitivity-norm": ("sensitivity_norm", str, "Linf | L2 ball for the sensitivity perturbations"),
}


# switch -> (settings field, argparse action, help): on/off settings of analyze, eval and certify.
SWITCHES: dict[str, tuple[str, str, str]] = {
    "--shared-noise": ("shared_noise", "store_true",
                       "reuse the clean image's noise draws for the attacked image (labelled option)"),
    "--no-noise-floor": ("noise_floor", "store_false", "skip the noise floor (faster; no floor to compare V_k with)"),
    "--early-stop": ("early_stop", "store_true",
                     "stop sampling once the label and the top-k set are statistically settled"),
    "--no-perturbation-test": ("perturbation_test", "store_false",
                               "skip the perturbation test (saves about half the time of the smoothed modes)"),
    "--check-attacks": ("check_attacks", "store_true",
                        "check the top-k certificate against PGD-L2 and the top-k attack inside the radius"),
    "--allow-download": ("allow_download", "store_true", "allow hub downloads for named hub models"),
    "--no-progress": ("progress", "store_false", "no progress bar"),
    "--no-figures": ("figures", "store_false", "write the tables but not the figures"),
    "--strict": ("strict", "store_true",
                 "stop at the first unreadable image (default: skip it, name it in the summary and go on)"),
}


def add_switches(p: argparse.ArgumentParser, *flags: str) -> None:
    """Add on/off flags of :data:`SWITCHES`; unset ones leave the settings' defaults alone."""
    for flag in flags:
        dest, action, help_text = SWITCHES[flag]
        p.add_argument(flag, dest=dest, action=action, default=argparse.SUPPRESS, help=help_text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="attack one image and compare the vanilla ViT with the FViT",
                       description="Attack one image and compare the vanilla ViT with the Faithful ViT (DDS).")
    p.add_argument("image", help="image file (PNG, JPEG, WebP, BMP, TIFF, GIF)")
    for flag, (dest, kind, help_text) in ANALYZE_FLAGS.items():
        p.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=help_text)
    p.add_argument("--attack-param", action="append", default=[], metavar="NAME=VALUE",
                   help="any other attack parameter, e.g. --attack-param alpha=2/255 (repeatable)")
    add_switches(p, "--shared-noise", "--no-noise-floor", "--early-stop")
    p.add_argument("--config", help="settings JSON (as exported by the dashboard); explicit flags override it")
    p.add_argument("--allow-download", action="store_true", help="allow hub downloads for named hub models")
    p.add_argument("--json", help="write the result JSON here ('-' for standard output)")
    p.add_argument("--out", help="folder for the key figures (PNG) and the settings file")
    p.set_defaults(handler=run_analyze)
    a = sub.add_parser("attacks", help="list the attacks and their parameters")
    a.set_defaults(handler=_list_attacks)


def attack_params(items: list[str]) -> dict:
    """The repeatable ``--attack-param NAME=VALUE`` flags as {name: value} (values as param_value reads them)."""
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SettingError(f"--attack-param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = param_value(value)
    return params


def config_from_args(ns: argparse.Namespace):
    from fvit_core.analysis.config import AnalysisConfig
    from fvit_core.protocol.settings import flat_names

    base = AnalysisConfig.from_file(ns.config).to_dict() if ns.config else AnalysisConfig().to_dict()
    names = set(flat_names(AnalysisConfig)) - {"target"}  # a name or an index: resolved by target_index
    base.update({k: v for k, v in vars(ns).items() if k in names})
    params = base.get("attack_params") or {}
    if not isinstance(params, dict):
        raise SettingError(f"attack_params must be a JSON object of NAME: VALUE pairs, got {params!r}")
    base["attack_params"] = {**params, **attack_params(ns.attack_param)}
    return AnalysisConfig.from_dict(base)


def param_value(text: str):
    """A --attack-param value: true/false, a whole number, a number (8/255 allowed) or text."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if stripped and set(stripped) <= _NUMERIC and _too_long(stripped):
        raise SettingError(f"--attack-param value {_too_long(stripped)}")
    try:
        return int(stripped) if stripped.lstrip("-").isdigit() else parse_number(stripped)
    except argparse.ArgumentTypeError:
        return stripped


def run_analyze(ns: argparse.Namespace) -> int:
    started = time.perf_counter()
    from fvit_core.analysis.pipeline import analyze
    from fvit_core.data.files import atomic_write_text, check_writable_file, check_writable_folder
    from fvit_core.data.images import fit_notice, load_image

    # Settings first (checked when made): a typo fails in milliseconds, before any model is loaded.
    cfg = config_from_args(ns)
    if ns.json and ns.json != "-":  # outputs next: a bad path must not cost the analysis
        check_writable_file(ns.json, "--json")
    if ns.out:
        check_writable_folder(ns.out, "--out")
    image = load_image(ns.image)
    # --allow-download does not override HF_HUB_OFFLINE set by the user: offline stays offline.
    pair = cfg.models.load(allow_download=ns.allow_download)
    if getattr(ns, "target", None) is not None:
        cfg = cfg.replace(target=target_index(ns.target, pair.classifier.class_names))
    notice = fit_notice(tuple(image.shape[1:]), tuple(pair.classifier.img_size), cfg.image_mode)
    if notice:  # said before the analysis, as the dashboard says it beside the upload
        print(f"fvit analyze: note: {notice}", file=sys.stderr)
    load = time.perf_counter() - started
    result = analyze(image, cfg, pair=pair)
    # The engine times the analysis; the command also spent `load` importing it, decoding the
    # image and loading the models, which the wall time of a run includes.
    result.timing = {"load": load, **result.timing, "total": load + result.timing["total"]}
    text = result.dumps()
    if ns.json == "-":
        print(text)
    elif ns.json:
        atomic_write_text(Path(ns.json), text)
    if ns.out:
        from fvit_core.report.export import save_key_figures

        out = Path(ns.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "settings.json", json.dumps(cfg.to_dict(), indent=2))
        save_key_figures(result, out, photo=image)
    if ns.json != "-":
        print(_summary(result))
    return 0


def target_index(text: str, class_names) -> int:
    """The class index of ``--target``: a class name (case-insensitive) or an index."""
    names = [str(name) for name in class_names]
    lowered = {name.lower(): i for i, name in enumerate(names)}
    if text.strip().lower() in lowered:
        return lowered[text.strip().lower()]
    if text.strip().isdigit() and int(text) < len(names):
        return int(text)
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} classes)" if len(names) > 10 else "")
    raise SettingError(f"--target {text!r} is not a class of the model; give a class name or an index "
                       f"0..{len(names) - 1} ({shown})")


def _summary(result) -> str:
    v, f, d = result.vanilla, result.fvit, result.faithful
    floor = f"{d.topk_overlap_floor:.2f}" if d.topk_overlap_floor is not None else "n/a"
    samples = f"{d.n_samples} samples"
    explains = result.explanation
    target = f", explains {explains['target_name']}" if explains["target"] is not None else ""
    if d.stopped_early:
        samples += f" of {result.config.sampling.n_samples}, stopped early"
    # A negative class is CERTIFY's abstention: no certified majority, so no radius at all.
    radius = "abstain" if d.certified.predicted_class < 0 else f"{d.certified.class_radius:.3f} (L2)"
    timing = result.timing
    load = f" (load {timing['load']:.2f} s)" if "load" in timing else ""
    return "\n".join([
        f"attack {result.attack['name']}: Linf {budget_text(result.attack['linf'])}, L2 {result.attack['l2']:.3f}",
        f"vanilla ViT ({result.config.explanation.method}{target}): {v.clean.label_name} ({v.clean.confidence:.2f}) -> "
        f"{v.attacked.label_name} ({v.attacked.confidence:.2f}); top-{result.config.explanation.k} overlap {v.topk_overlap:.2f}",
        f"FViT ({d.mode}, sigma {d.sigma:g}, {samples}): {f.clean.label_name} ({f.clean.confidence:.2f}) -> "
        f"{f.attacked.label_name} ({f.attacked.confidence:.2f}); top-{result.config.explanation.k} overlap {f.topk_overlap:.2f} "
        f"(noise floor {floor})",
        f"certified: class radius {radius}, top-k radius {d.certified.topk_radius_l2:.4f} (L2)",
        f"time {timing['total']:.2f} s{load}",
    ])


def budget_text(value: float) -> str:
    """A budget in pixel units as a fraction of 255: '8/255', '1.6/255' where that is exact (to
    float rounding; --eps accepts it back), else two decimals ('2.37/255')."""
    exact = fraction_of_255(value)
    return exact if exact is not None else f"{float(value) * 255.0:.2f}/255"


def fraction_of_255(value: float) -> str | None:
    """'8/255' or '1.6/255' when ``value`` * 255 has at most three decimals, else None."""
    steps = float(value) * 255.0
    if abs(steps - round(steps, 3)) < 1e-6 * max(1.0, abs(steps)):  # float32 pixels: ~1e-7 relative
        return f"{round(steps, 3):g}/255"
    return None


def _list_attacks(ns: argparse.Namespace) -> int:
    from fvit_core.attacks.specs import ATTACKS

    for spec in ATTACKS.values():
        params = ", ".join(f"{p.name}={_default_text(p)}" for p in spec.params)
        print(f"{spec.name:12s} {spec.norm:5s} {params}")
    return 0



def _default_text(param) -> str:
    """A parameter's default as typed on the command line: budgets in /255 units as fractions
    where exact (8/255, which --eps accepts back), other floats shortest-exact."""
    value = param.default
    if param.unit == "/255" and isinstance(value, float) and fraction_of_255(value) is not None:
        return fraction_of_255(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
