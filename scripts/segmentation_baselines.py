"""What the segmentation test gives maps that look at no image: a centred Gaussian prior and a
random map, scored like every explanation (docs/METRICS.md), to read docs/RESULTS.md's table against.

    python scripts/segmentation_baselines.py MASKS [--size 32 --grid 8 --image-mode resize]

MASKS is a mask folder (MASKS/<class>/<stem>.png, as scripts/prepare_davis_masks.py writes).
Prints pixel accuracy, mIoU and mAP of each baseline with 95% bootstrap intervals, and the mean
share of object pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fvit_core import metrics
from fvit_core.batch.summary import pooled_ci
from fvit_core.data.images import load_image
from fvit_core.data.segmentation import fit_mask, load_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("masks", type=Path)
    parser.add_argument("--size", type=int, default=32, help="the classifier's input side (default 32)")
    parser.add_argument("--grid", type=int, default=8, help="patches per side (default 8)")
    parser.add_argument("--image-mode", default="resize")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    g = args.grid
    rows, cols = np.mgrid[0:g, 0:g]
    centre = np.exp(-((rows - (g - 1) / 2) ** 2 + (cols - (g - 1) / 2) ** 2) / (2 * (g / 4) ** 2)).reshape(-1)
    rng = np.random.default_rng(args.seed)
    counts: dict[str, list] = {"centre prior": [], "random map": []}
    shares = []
    for path in sorted(args.masks.rglob("*.png")):
        mask = fit_mask(load_mask(path, load_image(path).shape[1:]), (args.size, args.size), mode=args.image_mode)
        shares.append(mask.mean())
        counts["centre prior"].append(metrics.segmentation_counts(centre, mask, (g, g)))
        counts["random map"].append(metrics.segmentation_counts(rng.random(g * g), mask, (g, g)))
    print(f"{len(shares)} masks; object share {np.mean(shares):.3f} of the pixels")
    for name, values in counts.items():
        cells = [pooled_ci(values, m).cell() for m in metrics.SEGMENTATION_METRICS]
        print(f"{name:13s} pixel acc. {cells[0]}  mIoU {cells[1]}  mAP {cells[2]}")


if __name__ == "__main__":
    main()
