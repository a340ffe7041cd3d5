"""Same image, settings and seed, same numbers: compare two checkouts through the CLI, eval,
certify and the dashboard.

Used to show that a refactoring (issue 22, the layered engine) changes no number. ``run`` records
every front's output of one checkout into a folder; ``compare`` reads two such folders and checks
labels, votes and V_k exactly, noise floors and intervals exactly, and every float (attention,
probabilities, divergences, radii) to ``--atol`` (default 1e-6). Timing fields are ignored.

    git worktree add /tmp/old <commit>
    python scripts/equivalence.py run --repo /tmp/old --out /tmp/eq/old
    python scripts/equivalence.py run --repo . --out /tmp/eq/new
    python scripts/equivalence.py compare /tmp/eq/old /tmp/eq/new
    python scripts/equivalence.py speed --repos /tmp/old . --rounds 5   # warm seconds, alternated

Each case runs in a fresh process with ``PYTHONPATH=<repo>``, so the checkout's own code is
measured, not the installed one. Nothing here imports the engine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-test-2k"

# fvit analyze cases: name -> extra flags (the image is added first).
ANALYZE_CASES: dict[str, list[str]] = {
    "default": [],
    "float32": ["--precision", "float32"],
    "rollout": ["--method", "rollout", "--precision", "float32"],
    "grad_rollout": ["--method", "grad_rollout", "--n-samples", "16"],
    "gradcam_max": ["--method", "gradcam", "--head-fusion", "max", "--n-samples", "16"],
    "transformer_attribution": ["--method", "transformer_attribution", "--n-samples", "16"],
    "partial_lrp": ["--method", "partial_lrp", "--n-samples", "16"],
    "fgsm": ["--attack", "fgsm", "--eps", "4/255"],
    "pgdl2": ["--attack", "pgdl2", "--eps", "0.5", "--precision", "float32"],
    "apgd": ["--attack", "apgd", "--steps", "3"],
    "square": ["--attack", "square", "--attack-param", "n_queries=20"],
    "topk": ["--attack", "topk", "--k", "4", "--beta", "0.75"],
    "eot_dds": ["--attack", "eot_dds", "--steps", "2", "--n-samples", "16"],
    "none": ["--attack", "none"],
    "rs": ["--mode", "rs", "--sigma", "0.12"],
    "denoise_only": ["--mode", "denoise-only"],
    "multistep": ["--mode", "multistep", "--n-samples", "8"],
    "shared_noise": ["--shared-noise"],
    "independent_floor": ["--noise-floor-estimator", "independent"],
    "shared_independent": ["--shared-noise", "--noise-floor-estimator", "independent", "--precision", "float32"],
    "early_stop": ["--early-stop", "--n-samples", "128"],
    "no_floor": ["--no-noise-floor", "--sigma", "0.5"],
    "sensitivity": ["--sensitivity-samples", "3", "--n-samples", "16"],
    "seed": ["--seed", "7", "--batch-size", "16"],
}
# A non-square photo (the gallery's deer upscaled to 48x40) for the image modes.
WIDE_CASES: dict[str, list[str]] = {
    "pad": ["--image-mode", "pad"],
    "center_crop": ["--image-mode", "center_crop", "--precision", "float32"],
}
EVAL_FLAGS = ["--attack", "pgd,fgsm,topk", "--eps", "4/255,8/255", "--mode", "dds,rs,denoise-only",
              "--sigma", "0.12,0.25", "--method", "raw,rollout", "--n-samples", "16", "--pt-samples", "4",
              "--limit", "4", "--no-progress", "--no-figures"]
EVAL_FLOOR_FLAGS = ["--attack", "pgd", "--mode", "dds", "--method", "raw", "--n-samples", "16",
                    "--noise-floor-estimator", "independent", "--shared-noise", "--sensitivity-samples", "2",
                    "--limit", "3", "--no-progress", "--no-figures", "--no-perturbation-test"]
CERTIFY_FLAGS = ["--n0", "16", "--n", "64", "--limit", "4", "--check-random", "2", "--check-attacks",
                 "--check-samples", "16", "--no-progress", "--no-figures"]
IGNORED_KEYS = {"timing", "seconds", "time"}


def _env(repo: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    env.pop("FVIT_MODELS_DIR", None)
    return env


def _fvit(repo: Path, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "fvit_core.cli", *args]
    done = subprocess.run(cmd, cwd=repo, env=_env(repo), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")


def _data_folder(tmp: Path) -> Path:
    """Three images per class of the first four classes of the shared test set."""
    folder = tmp / "data"
    for klass in sorted(p.name for p in SHARED.iterdir())[:4]:
        (folder / klass).mkdir(parents=True)
        for path in sorted((SHARED / klass).iterdir())[:3]:
            shutil.copy(path, folder / klass / path.name)
    return folder


def _wide_image(repo: Path, tmp: Path) -> Path:
    from PIL import Image

    path = tmp / "wide.png"
    Image.open(repo / "assets" / "samples" / "cifar10_deer_1.png").convert("RGB").resize((48, 40)).save(path)
    return path


def run(repo: Path, out: Path, only: set[str] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    repo = repo.resolve()
    image = repo / "assets" / "samples" / "cifar10_cat_1.png"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        wide = _wide_image(repo, tmp)
        cases = {**{k: [str(image), *v] for k, v in ANALYZE_CASES.items()},
                 **{k: [str(wide), *v] for k, v in WIDE_CASES.items()}}
        for name, args in cases.items():
            if only and name not in only:
                continue
            _fvit(repo, ["analyze", *args, "--json", str(out / f"analyze_{name}.json")])
            print("analyze", name, flush=True)
        data = _data_folder(tmp)
        for name, command, flags in (("eval", "eval", EVAL_FLAGS), ("eval_floor", "eval", EVAL_FLOOR_FLAGS),
                                     ("certify", "certify", CERTIFY_FLAGS)):
            if only and name not in only:
                continue
            folder = tmp / name
            _fvit(repo, [command, "--data", str(data), "--out", str(folder), *flags])
            rows = folder / ("rows.jsonl" if command == "eval" else "certify.tsv")
            shutil.copy(rows, out / f"{name}{rows.suffix}")
            print(command, name, flush=True)
        if not only or "dashboard" in only:
            _dashboard(repo, out / "dashboard.json")
            print("dashboard", flush=True)


_DASHBOARD = r"""
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=600)
at.session_state["n_samples"] = 16
at.run()
assert not at.exception, at.exception
current = at.session_state["_current"]
json.dump(current.result.to_json(), open(sys.argv[2], "w"))
"""


def _dashboard(repo: Path, path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _DASHBOARD, str(repo / "app" / "streamlit_app.py"), str(path)],
                          cwd=repo, env=_env(repo), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dashboard failed: {done.stderr[-3000:]}")


# The speed child: one process per (checkout, precision), warm analyses of the shipped pair at the
# defaults on one gallery image, each computed afresh (the old engine's global caches cleared).
_SPEED = r"""
import json, statistics, sys, time
from fvit_core.analysis import pipeline
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.data.images import load_image
from fvit_core.models import load_pair
pair = load_pair("default")
image = load_image(sys.argv[1])
config = AnalysisConfig.from_dict({"precision": sys.argv[2]})
fresh = getattr(pipeline, "clear_cache", lambda: None)
pipeline.analyze(image, config, pair=pair)  # warm-up
times = []
for _ in range(int(sys.argv[3])):
    fresh()
    start = time.perf_counter()
    pipeline.analyze(image, config, pair=pair)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def speed(repos: list[Path], rounds: int, repeats: int) -> None:
    """Median warm seconds of one default analysis per checkout and precision, the checkouts
    alternated round after round so that a drifting host affects each alike."""
    import os
    import statistics

    image = str(Path(__file__).resolve().parents[1] / "assets" / "samples" / "cifar10_cat_1.png")
    seen: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for precision in ("auto", "float32"):
            for repo in repos:
                done = subprocess.run([sys.executable, "-c", _SPEED, image, precision, str(repeats)],
                                      cwd=repo, env=_env(repo.resolve()), capture_output=True, text=True, check=True)
                seen.setdefault((str(repo), precision), []).extend(json.loads(done.stdout))
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after the runs; {rounds} rounds x {repeats} analyses")
    for (repo, precision), times in seen.items():
        print(f"{repo:30s} {precision:8s} median {statistics.median(times):.3f} s  (min {min(times):.3f}, "
              f"n {len(times)})")


# ---------------------------------------------------------------------------------------------


def _load(path: Path):
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sorted(rows, key=lambda r: json.dumps([r["image"], r["attack"], r["eps"], r["mode"], r["sigma"],
                                                      r["method"]]))
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def _diff(a, b, where: str, atol: float, out: list[str], worst: list[float]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in IGNORED_KEYS:
                continue
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'new' if key in b else 'old'}")
                continue
            _diff(a[key], b[key], f"{where}.{key}", atol, out, worst)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} != {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", atol, out, worst)
    elif isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            out.append(f"{where}: {a!r} != {b!r}")
            return
        gap = abs(a - b) if math.isfinite(a) and math.isfinite(b) else (0.0 if a == b else math.inf)
        worst.append(gap)
        exact = any(word in where for word in ("topk_overlap", "floor", "label", "votes", "predict"))
        if gap > (0.0 if exact else atol):
            out.append(f"{where}: {a!r} != {b!r} (gap {gap:.3g})")
    elif a != b:
        out.append(f"{where}: {a!r} != {b!r}")


def compare(old: Path, new: Path, atol: float) -> int:
    problems: list[str] = []
    worst: list[float] = []
    names = sorted(p.name for p in old.iterdir())
    for name in names:
        if not (new / name).exists():
            problems.append(f"{name}: missing in {new}")
            continue
        _diff(_load(old / name), _load(new / name), name, atol, problems, worst)
    print(f"{len(names)} outputs compared, {len(worst)} floats, largest difference {max(worst, default=0.0):.3g}")
    for line in problems[:50]:
        print("  DIFF", line)
    print("identical up to the tolerance" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--only", nargs="*", help="case names (default: all)")
    c = sub.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--atol", type=float, default=1e-6)
    s = sub.add_parser("speed")
    s.add_argument("--repos", type=Path, nargs="+", required=True)
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--repeats", type=int, default=5)
    ns = parser.parse_args()
    if ns.command == "run":
        run(ns.repo, ns.out, set(ns.only) if ns.only else None)
        return 0
    if ns.command == "speed":
        speed(ns.repos, ns.rounds, ns.repeats)
        return 0
    return compare(ns.old, ns.new, ns.atol)


if __name__ == "__main__":
    sys.exit(main())
