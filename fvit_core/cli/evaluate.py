"""``fvit eval`` and ``fvit certify``: batch evaluation and certification over an image folder.

Flags that ``fvit analyze`` also has keep its names and help; the grid flags (--attack, --eps,
--sigma, --mode, --method) take comma-separated lists. Both commands run unchanged under
``torchrun`` (one process per GPU or CPU slot; see the README).
"""

from __future__ import annotations

import argparse
from typing import Callable

from fvit_core.cli.analyze import ANALYZE_FLAGS, add_switches, attack_params, parse_number


def comma_list(kind: Callable[[str], object]) -> Callable[[str], tuple]:
    """argparse type for 'a,b,c' -> (kind(a), kind(b), kind(c)); 8/255 style numbers allowed."""

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return tuple(kind(p) for p in parts)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = f"list of {getattr(kind, '__name__', 'values')}"
    return parse


def _shared(p: argparse.ArgumentParser, flag: str, *, as_list: bool = False, dest: str | None = None,
            extra_help: str = "") -> None:
    """Add a flag that `fvit analyze` also has, with its name and help."""
    field, kind, help_text = ANALYZE_FLAGS[flag]
    kind = comma_list(kind) if as_list else kind
    suffix = " (comma-separated list)" if as_list else ""
    p.add_argument(flag, dest=dest or field, type=kind, default=argparse.SUPPRESS, help=help_text + suffix + extra_help)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="image folder: DIR/<class>/<image files> (fvit eval also takes "
                                                 "a gtsegs_ijcv.mat-format file: the segmentation test)")
    p.add_argument("--out", required=True, help="output folder (rows, summary, figures); rerun to resume")
    p.add_argument("--label-map", dest="label_map", default=argparse.SUPPRESS,
                   help="JSON file {folder: class index or class name}; default: folder names that are the "
                        "classifier's class names, else sorted folder order")
    p.add_argument("--limit", type=int, default=argparse.SUPPRESS, help="evaluate this many images (a seeded random subset)")
    p.add_argument("--subset-seed", dest="subset_seed", type=int, default=argparse.SUPPRESS,
                   help="seed of the image order / subset (default 0)")
    for flag in ("--model", "--classifier", "--denoiser", "--head-fusion", "--k", "--beta", "--seed", "--device",
                 "--batch-size", "--image-mode", "--precision"):
        _shared(p, flag)
    p.add_argument("--multistep-steps", dest="multistep_steps", type=int, default=argparse.SUPPRESS,
                   help="denoising steps of mode multistep (default 10)")
    add_switches(p, "--allow-download")
    p.add_argument("--dist-backend", dest="dist_backend", choices=("gloo", "nccl"), default=argparse.SUPPRESS,
                   help="torch.distributed backend under torchrun (default gloo: it only carries a barrier)")
    add_switches(p, "--no-progress", "--no-figures", "--strict")


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate faithfulness over an image folder (JSON rows, tables, figures)",
                       description="Batch evaluation: top-k overlap, accuracy, divergences and perturbation-test "
                                   "AUCs of the vanilla ViT and the smoothed ViTs under attack, over an image folder. "
                                   "Resumable; runs under torchrun.")
    _common(e)
    _shared(e, "--attack", as_list=True, dest="attacks")
    _shared(e, "--eps", as_list=True, extra_help="; attacks without a budget ignore it")
    _shared(e, "--steps")
    _shared(e, "--sigma", as_list=True, dest="sigmas")
    _shared(e, "--mode", as_list=True, dest="modes", extra_help="; plus vanilla (no smoothing)")
    _shared(e, "--method", as_list=True, dest="methods")
    _shared(e, "--n-samples")
    _shared(e, "--sampling")
    _shared(e, "--noise-floor-estimator")
    e.add_argument("--bootstrap", type=int, default=argparse.SUPPRESS,
                   help="bootstrap resamples of the bootstrap noise floor (default 200)")
    for flag in ("--sensitivity-samples", "--sensitivity-radius", "--sensitivity-norm"):
        _shared(e, flag)
    e.add_argument("--attack-param", action="append", default=[], metavar="NAME=VALUE",
                   help="any other attack parameter, given to the attacks that have it (repeatable)")
    add_switches(e, "--shared-noise", "--no-noise-floor")
    e.add_argument("--renyi-alpha", dest="renyi_alpha", type=float, default=argparse.SUPPRESS,
                   help="order of the Renyi divergence reported (default 2)")
    e.add_argument("--pt-samples", dest="pt_samples", type=int, default=argparse.SUPPRESS,
                   help="smoothing samples per perturbed image in the perturbation test (default 16)")
    e.add_argument("--pt-fill", dest="pt_fill", choices=("mean", "zero"), default=argparse.SUPPRESS,
                   help="removed patches take the image's per-channel mean (default) or 0")
    add_switches(e, "--no-perturbation-test")
    e.add_argument("--masks", default=argparse.SUPPRESS, metavar="DIR",
                   help="segmentation test: object masks MASKS/<class>/<stem>.png beside --data's images (a gtsegs "
                        "--data file brings its own); adds pixel accuracy, mIoU and mAP of every explanation")
    e.set_defaults(handler=run_eval_command)

    c = sub.add_parser("certify", help="Cohen CERTIFY per image plus the top-k attention radius (TSV, tables, figure)",
                       description="Certification over an image folder: Cohen et al.'s CERTIFY (class and L2 radius) "
                                   "and the top-k attention radius per image. Resumable; runs under torchrun.")
    _common(c)
    _shared(c, "--sigma")
    _shared(c, "--mode", extra_help="; dds, rs or multistep")
    _shared(c, "--method", extra_help="; explanation whose top-k radius is certified")
    c.add_argument("--n0", type=int, default=argparse.SUPPRESS, help="selection samples (default 100)")
    c.add_argument("--n", type=int, default=argparse.SUPPRESS, help="estimation samples (default 1000)")
    c.add_argument("--alpha", type=float, default=argparse.SUPPRESS,
                   help="failure probability of the certificate (default 0.001)")
    c.add_argument("--radii", type=comma_list(parse_number), default=argparse.SUPPRESS,
                   help="L2 radii of the certified-accuracy table (default 0,0.125,0.25,0.375,0.5,0.75,1)")
    c.add_argument("--check-random", dest="check_random", type=int, default=argparse.SUPPRESS,
                   help="check the top-k certificate at this many random points on the certified sphere (default 0)")
    add_switches(c, "--check-attacks")
    c.add_argument("--check-samples", dest="check_samples", type=int, default=argparse.SUPPRESS,
                   help="smoothing samples per checked point (default --n)")
    c.set_defaults(handler=run_certify_command)


def _values(ns: argparse.Namespace, cls: type) -> dict:
    from fvit_core.protocol.settings import flat_names

    names = set(flat_names(cls))
    return {k: v for k, v in vars(ns).items() if k in names}


def eval_config_from_args(ns: argparse.Namespace):
    from fvit_core.batch.config import EvalConfig

    values = _values(ns, EvalConfig)
    values["attack_params"] = attack_params(ns.attack_param)
    return EvalConfig.from_dict(values)


def run_eval_command(ns: argparse.Namespace) -> int:
    from fvit_core.batch.evaluate import run_eval

    report = run_eval(eval_config_from_args(ns))
    if report.rank == 0:
        missing = f", {report.rows_missing} missing" if report.rows_missing else ""
        skipped = (f", {len(report.skipped)} unreadable image(s) skipped (listed in the summary)"
                   if report.skipped else "")
        print(f"fvit eval: {report.rows_total} rows{missing}{skipped} ({report.rows_written} new on rank 0, "
              f"{report.world_size} process(es), {report.seconds:.1f} s); summary in {report.out / 'summary.md'}")
    return 0


def run_certify_command(ns: argparse.Namespace) -> int:
    from fvit_core.batch.certification import run_certify
    from fvit_core.batch.config import CertifyConfig

    report = run_certify(CertifyConfig.from_dict(_values(ns, CertifyConfig)))
    if report.rank == 0:
        skipped = f", {len(report.skipped)} unreadable image(s) skipped" if report.skipped else ""
        print(f"fvit certify: {report.rows_total} images{skipped} ({report.rows_written} new on rank 0, "
              f"{report.world_size} process(es), {report.seconds:.1f} s); table in "
              f"{report.out / 'certified_accuracy.md'}")
    return 0
