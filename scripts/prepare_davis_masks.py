"""Real photos with real object masks for the segmentation test: DAVIS-2016 480p frames (CC BY 4.0)
of the sequences whose object is a CIFAR-10 class, as an image folder and a mask folder.

    python scripts/prepare_davis_masks.py GIT_DIR OUT [--every 5]

GIT_DIR is a bare git directory of a repository holding DAVIS/JPEGImages/480p/<sequence>/*.jpg and
DAVIS/Annotations/480p/<sequence>/*.png (the tool library's `fetch github:MathLee/EOR-VOS` gives
one). OUT/images/<class>/<sequence>_<frame>.jpg and OUT/masks/<class>/<sequence>_<frame>.png are
written for every ``--every``-th frame, ready for

    fvit eval --data OUT/images --masks OUT/masks --out RUN ...

Nothing is downloaded here and the frames are never committed (docs/RESULTS.md gives the run).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

# DAVIS-2016 sequences (of the 20 validation ones) whose annotated object is a CIFAR-10 class.
SEQUENCE_CLASSES: dict[str, str] = {
    "blackswan": "bird",
    "car-roundabout": "automobile", "car-shadow": "automobile", "drift-chicane": "automobile",
    "drift-straight": "automobile",
    "dog": "dog", "libby": "dog",
    "horsejump-high": "horse",
}
IMAGES, MASKS = "DAVIS/JPEGImages/480p", "DAVIS/Annotations/480p"


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True).stdout


def prepare(git_dir: Path, out: Path, every: int) -> int:
    """Write the frames and masks; returns how many pairs were written."""
    written = 0
    for sequence, label in SEQUENCE_CLASSES.items():
        frames = sorted(_git(git_dir, "ls-tree", "--name-only", f"HEAD:{MASKS}/{sequence}").decode().split())
        for name in frames[::every]:
            stem = Path(name).stem
            for kind, source, suffix in (("images", IMAGES, ".jpg"), ("masks", MASKS, ".png")):
                target = out / kind / label / f"{sequence}_{stem}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_git(git_dir, "show", f"HEAD:{source}/{sequence}/{stem}{suffix}"))
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("git_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--every", type=int, default=5, help="keep every n-th annotated frame (default 5)")
    args = parser.parse_args()
    count = prepare(args.git_dir, args.out, args.every)
    print(f"{count} frames with masks in {args.out}/images and {args.out}/masks "
          f"({len(SEQUENCE_CLASSES)} sequences: {', '.join(sorted(set(SEQUENCE_CLASSES.values())))})")


if __name__ == "__main__":
    main()
