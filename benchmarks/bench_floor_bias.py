"""The noise floor's bias: each estimator of the V_k floor against independent re-estimates.

    python benchmarks/bench_floor_bias.py --data ~/data/cifar10/test --exclude ../shared/data/cifar10-test-2k \
        --images 120 --replicates 4 --references 8 --out out/floor_bias     # about 10 minutes on 2 cores

The noise floor is the expected top-k overlap of two independent N-draw clean estimates. For each
held-out CIFAR-10 test image (none of the evaluation subset: ``--exclude``), at the defaults
(DDS sigma 0.25, raw attention, top-8, N = 32 antithetic draws), the reference is the mean V_k of
``--references`` fresh pairs of independent estimates; each estimator is computed ``--replicates``
times from fresh draws (its own mean per image):

- ``bootstrap``: the mean V_k of 200 pairs of resamples of one estimate's own draws (pair means for
  antithetic draws), the estimator fvit used by default before issue 25;
- ``independent``: V_k of the estimate and a second independent one (N more draws);
- ``split``: V_k of the two halves of one estimate (N/2 draws each; known to read low).

Bias per image = estimator mean - reference mean; reported: the mean over images with its 95%
percentile-bootstrap interval over images (4,000 resamples). Writes rows.jsonl, summary.json and
summary.md into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_variance import _cpu_name, _mean_ci, held_out_images  # noqa: E402
from fvit_core.analysis.noise_floor import NoiseFloorSettings, noise_floor_estimate  # noqa: E402
from fvit_core.data.images import load_image, prepare_image  # noqa: E402
from fvit_core.method.faithful_vit import FaithfulViT  # noqa: E402
from fvit_core.metrics import topk_overlap  # noqa: E402
from fvit_core.models import load_pair  # noqa: E402

K, SIGMA, N, SCHEME = 8, 0.25, 32, "antithetic"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--exclude", type=Path, default=None)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--references", type=int, default=8)
    parser.add_argument("--subset-seed", type=int, default=25)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pair = load_pair("default")
    fvit = FaithfulViT.from_pair(pair, SIGMA)
    bootstrap = NoiseFloorSettings(estimator="bootstrap")
    images = held_out_images(args.data.expanduser(), args.exclude, args.images, args.subset_seed)
    started, load_before = time.time(), os.getloadavg()
    rows = []
    with (args.out / "rows.jsonl").open("w") as rows_file:
        for index, (label_name, path) in enumerate(images):
            x = torch.from_numpy(prepare_image(load_image(path), pair.smoothing_size("dds")))[None]
            draw = iter(range(10_000))

            def estimate(keep: bool = False):
                g = torch.Generator().manual_seed(100_000 * index + next(draw))
                return fvit.sample(x, N, scheme=SCHEME, keep_samples=keep, generator=g)[0]

            reference = [float(topk_overlap(estimate().attention, estimate().attention, K))
                         for _ in range(args.references)]
            values: dict[str, list[float]] = {"bootstrap": [], "independent": [], "split": []}
            for replicate in range(args.replicates):
                clean = estimate(keep=True)
                rng = np.random.default_rng([index, replicate])
                values["bootstrap"].append(noise_floor_estimate(bootstrap, K, clean, None, rng).value)
                values["independent"].append(float(topk_overlap(clean.attention, estimate().attention, K)))
                half = clean.samples_attention.shape[0] // 2  # whole antithetic pairs in each half
                values["split"].append(float(topk_overlap(clean.samples_attention[:half].mean(0),
                                                          clean.samples_attention[half:].mean(0), K)))
            row = {"image": path.name, "class": label_name, "reference": float(np.mean(reference)),
                   **{name: float(np.mean(v)) for name, v in values.items()}}
            rows.append(row)
            rows_file.write(json.dumps(row) + "\n")
            rows_file.flush()
            if (index + 1) % 10 == 0:
                print(f"{index + 1}/{len(images)} images, {time.time() - started:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    summary = {"reference_mean": float(np.mean([r["reference"] for r in rows])), "bias": {}}
    for name in ("bootstrap", "independent", "split"):
        mean, low, high = _mean_ci([r[name] - r["reference"] for r in rows], rng)
        summary["bias"][name] = {"mean": mean, "low": low, "high": high,
                                 "floor_mean": float(np.mean([r[name] for r in rows]))}
    summary["run"] = {"images": len(rows), "replicates": args.replicates, "references": args.references,
                      "n_samples": N, "scheme": SCHEME, "sigma": SIGMA, "k": K, "seconds": time.time() - started,
                      "load_average_before": load_before, "load_average_after": os.getloadavg(), "cpu": _cpu_name()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"Noise floor bias against {args.references} independent re-estimates per image ({len(rows)} held-out "
             f"images, N = {N} {SCHEME}, sigma {SIGMA}, raw, top-{K}; reference floor "
             f"{summary['reference_mean']:.3f}):", "", "| estimator | floor | bias [95% CI over images] |",
             "| --- | --- | --- |"]
    for name, b in summary["bias"].items():
        lines.append(f"| {name} | {b['floor_mean']:.3f} | {b['mean']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}] |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
