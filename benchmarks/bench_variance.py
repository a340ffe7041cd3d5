"""Fewer draws for the same precision: antithetic pairs and quasi-Monte Carlo against plain sampling.

    python benchmarks/bench_variance.py --data ~/data/cifar10/test --exclude ../shared/data/cifar10-test-2k \
        --images 60 --repeats 2 --out out/variance            # about 25 minutes on 2 cores

On held-out CIFAR-10 test images (``--exclude`` drops every image whose bytes are in the given
folder, so the evaluation subset used elsewhere is never looked at), with the shipped pair at
the defaults (PGD-10 8/255 on the vanilla ViT, DDS sigma 0.25, raw attention, top-8), for each
sampling scheme and number of draws N per estimate it makes two independent clean estimates and
one attacked estimate (FaithfulViT.sample, the attacked image from one default analysis per image
and repeat):

- the noise floor V_8(clean, clean'): the overlap of two independent estimates, the precision of
  one estimate (1 = no Monte Carlo error);
- the mean standard error of the attention map (the scheme's own SE: pair means for antithetic);
- the SE's calibration: the spread of clean - clean' against sqrt(SE^2 + SE'^2);
- V_8(clean, attacked) and whether the FViT's label is kept under the attack;
- label agreement of the two clean estimates.

Schemes: ``independent`` (plain), ``antithetic`` (the engine's option), and ``sobol`` (scrambled
Sobol points mapped to normals, given to FaithfulViT.sample as its noise; randomised QMC has no
per-estimate SE, so none is reported). Every comparison is paired (same image, attack and seed).
Writes rows.jsonl (one row per image, repeat, scheme, N), summary.json and summary.md into
``--out``; nothing under the checkout unless asked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fvit_core.analysis.config import AnalysisConfig  # noqa: E402
from fvit_core.analysis.pipeline import analyze  # noqa: E402
from fvit_core.data.images import load_image  # noqa: E402
from fvit_core.method.faithful_vit import FaithfulViT  # noqa: E402
from fvit_core.metrics import topk_overlap  # noqa: E402
from fvit_core.models import load_pair  # noqa: E402

GRID = {"independent": (16, 32, 48, 64, 96, 128), "antithetic": (16, 32, 48, 64), "sobol": (16, 32, 64)}
K = 8


def held_out_images(data: Path, exclude: Path | None, count: int, seed: int) -> list[tuple[str, Path]]:
    """``count`` images of ``data``/<class>/*, the same number per class where possible, none whose
    bytes are in ``exclude``; chosen with ``seed``."""
    skip = set()
    if exclude is not None:
        skip = {hashlib.sha256(p.read_bytes()).hexdigest() for p in exclude.rglob("*") if p.is_file()}
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    chosen: list[tuple[str, Path]] = []
    per_class = math.ceil(count / len(classes))
    for name in classes:
        files = sorted((data / name).iterdir())
        files = [f for f in files if hashlib.sha256(f.read_bytes()).hexdigest() not in skip]
        chosen += [(name, files[i]) for i in rng.permutation(len(files))[:per_class]]
    return chosen[:count] if len(chosen) <= count else [chosen[i] for i in sorted(rng.permutation(len(chosen))[:count])]


def sobol_noise(n: int, shape: tuple[int, ...], sigma: float, seed: int) -> torch.Tensor:
    """n scrambled Sobol points in prod(shape) dimensions, mapped to N(0, sigma^2) per coordinate."""
    engine = torch.quasirandom.SobolEngine(int(np.prod(shape)), scramble=True, seed=seed)
    u = engine.draw(n, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return (sigma * math.sqrt(2.0) * torch.erfinv(2 * u - 1)).float().reshape(n, *shape)


def row_of(scheme: str, n: int, clean, again, attacked) -> dict:
    """The measurements of one (scheme, N): two clean estimates and an attacked one."""
    row = {"scheme": scheme, "n": n, "floor": float(topk_overlap(clean.attention, again.attention, K)),
           "vk_attacked": float(topk_overlap(clean.attention, attacked.attention, K)),
           "label_kept": clean.label == attacked.label, "agree": clean.label == again.label, "se": None,
           "se_ratio": None}
    if scheme != "sobol":
        # The SE's calibration: the two clean estimates differ by Monte Carlo error only, so the
        # spread of their difference should match sqrt(SE^2 + SE'^2) (ratio 1).
        spread = np.sqrt(np.mean((clean.attention - again.attention) ** 2))
        row["se"] = float(np.mean(clean.attention_se))
        row["se_ratio"] = float(spread / np.sqrt(np.mean(clean.attention_se ** 2 + again.attention_se ** 2)))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--exclude", type=Path, default=None)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--subset-seed", type=int, default=24)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    pair = load_pair("default")
    images = held_out_images(args.data.expanduser(), args.exclude, args.images, args.subset_seed)
    rows_file = (args.out / "rows.jsonl").open("w")
    started, load_before = time.time(), os.getloadavg()
    for index, (label_name, path) in enumerate(images):
        pixels = load_image(path)
        for repeat in range(args.repeats):
            seed = 1000 * repeat + index
            # The attacked image of the default analysis (PGD-10 8/255 on the vanilla ViT).
            reference = analyze(pixels, AnalysisConfig.of(seed=seed, n_samples=2, noise_floor=False, k=K), pair=pair)
            fvit = FaithfulViT.from_pair(pair, reference.config.smoothing.sigma)
            x = torch.from_numpy(reference.clean_image)[None]
            x_adv = torch.from_numpy(reference.attacked_image)[None]
            shape = tuple(x.shape[1:])
            for scheme, sizes in GRID.items():
                for n in sizes:
                    if scheme == "sobol":
                        outs = [fvit.sample(image, n, noise=sobol_noise(n, shape, fvit.sigma, 3 * seed + part))[0]
                                for part, image in enumerate((x, x, x_adv))]
                    else:
                        outs = [fvit.sample(image, n, scheme=scheme,
                                            generator=torch.Generator().manual_seed(10 * seed + part))[0]
                                for part, image in enumerate((x, x, x_adv))]
                    row = row_of(scheme, n, *outs)
                    rows_file.write(json.dumps({"image": str(path.name), "class": label_name, "repeat": repeat, **row})
                                    + "\n")
            rows_file.flush()
        print(f"{index + 1}/{len(images)} images, {time.time() - started:.0f} s", flush=True)
    rows_file.close()
    summary = summarise([json.loads(line) for line in (args.out / "rows.jsonl").open()])
    summary["run"] = {"images": len(images), "repeats": args.repeats, "seconds": time.time() - started,
                      "load_average_before": load_before, "load_average_after": os.getloadavg(),
                      "cpu": _cpu_name(), "torch_threads": torch.get_num_threads()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(markdown(summary) + "\n")
    print(markdown(summary))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _mean_ci(values: list[float], rng: np.random.Generator, n_boot: int = 4000) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    boots = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


def summarise(rows: list[dict]) -> dict:
    """Per (scheme, N): means with 95% intervals over images (each image's repeats averaged first);
    paired differences against plain sampling at N = 64; draws needed to reach its floor."""
    rng = np.random.default_rng(0)
    by_image: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for row in rows:
        by_image.setdefault((row["scheme"], row["n"]), {}).setdefault(row["image"], []).append(row)

    def per_image(key, field):
        return {image: float(np.mean([float(r[field]) for r in rs])) for image, rs in by_image[key].items()
                if all(r.get(field) is not None for r in rs)}

    table = []
    for (scheme, n) in sorted(by_image, key=lambda k: (list(GRID).index(k[0]), k[1])):
        entry = {"scheme": scheme, "n": n}
        for field in ("floor", "vk_attacked", "label_kept", "agree", "se", "se_ratio"):
            values = per_image((scheme, n), field)
            if values:
                entry[field] = _mean_ci(list(values.values()), rng)
        table.append(entry)
    reference = per_image(("independent", 64), "floor")
    paired = []
    for (scheme, n) in by_image:
        values = per_image((scheme, n), "floor")
        common = sorted(set(values) & set(reference))
        paired.append({"scheme": scheme, "n": n,
                       "floor_minus_plain64": _mean_ci([values[i] - reference[i] for i in common], rng)})
    # Efficiency at equal N: how many plain draws give the variance of one draw of the scheme
    # (the paired ratio of variances, SE_plain^2 / SE_scheme^2, per image).
    efficiency = []
    for n in GRID["antithetic"]:
        plain, anti = per_image(("independent", n), "se"), per_image(("antithetic", n), "se")
        common = sorted(set(plain) & set(anti))
        efficiency.append({"n": n, "variance_ratio": _mean_ci([(plain[i] / anti[i]) ** 2 for i in common], rng)})
    needed = {}
    for scheme in GRID:
        curve = [(e["n"], e["floor"][0]) for e in table if e["scheme"] == scheme and "floor" in e]
        target = next(e["floor"][0] for e in table if e["scheme"] == "independent" and e["n"] == 64)
        needed[scheme] = _draws_to_reach(curve, target)
    return {"table": table, "paired": paired, "draws_for_plain64_floor": needed, "antithetic_efficiency": efficiency}


def _draws_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The N at which a floor curve (N, floor) first reaches ``target``, by linear interpolation in
    log N between grid points (None if it never does)."""
    curve = sorted(curve)
    for (n0, f0), (n1, f1) in zip(curve, curve[1:]):
        if f0 >= target:
            return float(n0)
        if f1 >= target:
            t = (target - f0) / (f1 - f0)
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    return float(curve[0][0]) if curve and curve[0][1] >= target else None


def markdown(summary: dict) -> str:
    def ci(value):
        return "" if value is None else f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]"

    lines = ["| scheme | N | noise floor V_8 | floor - plain N=64 (paired) | mean SE of w | SE calibration "
             "| V_8 clean vs attacked | FViT label kept | clean labels agree |",
             "| --- | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    paired = {(p["scheme"], p["n"]): p["floor_minus_plain64"] for p in summary["paired"]}
    for e in summary["table"]:
        se = "" if "se" not in e else f"{e['se'][0]:.5f}"
        lines.append(f"| {e['scheme']} | {e['n']} | {ci(e.get('floor'))} | {ci(paired.get((e['scheme'], e['n'])))} "
                     f"| {se} | {ci(e.get('se_ratio'))} | {ci(e.get('vk_attacked'))} | {ci(e.get('label_kept'))} "
                     f"| {ci(e.get('agree'))} |")
    needed = summary["draws_for_plain64_floor"]
    lines.append("")
    lines.append("Antithetic efficiency (plain draws worth one antithetic draw, SE_plain² / SE_antithetic² at equal "
                 "N, paired per image): " + ", ".join(f"N = {e['n']}: {ci(e['variance_ratio'])}"
                                                     for e in summary["antithetic_efficiency"]))
    lines.append("")
    lines.append("Draws per estimate to reach plain sampling's N = 64 floor: " + ", ".join(
        f"{scheme} {'n/a' if n is None else f'{n:.0f}'}" for scheme, n in needed.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
