"""Start-up: `fvit analyze` at the defaults against `python -c "import torch"`, in one run.

    python benchmarks/bench_startup.py --rounds 7 [--out out/startup.json]

Five commands run in fresh processes, alternated round by round so they see the same load:
`import torch`; the libraries every default analysis needs (torch, timm, diffusers' UNet2DModel
and DDPMScheduler), their floor, with the normal exit and with the quick one `fvit` uses;
`fvit analyze` at the defaults; the same with FVIT_FULL_EXIT=1 (the interpreter's normal
teardown). The wall times (seconds, medians) and their ratios to
`import torch` are printed with the load average. Then one
`python -X importtime` run of the analysis lists the slowest imports (cumulative), and the
analysis JSON's own `timing` says how much of the wall time was loading.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "assets" / "samples" / "cifar10_cat_1.png"


def _wall(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return seconds


def slowest_imports(command: list[str], env: dict, top: int = 15) -> list[tuple[str, float]]:
    """(module, cumulative seconds) of the ``top`` slowest top-level imports of ``command``."""
    done = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if cumulative.isdigit() and not name.startswith(" "):
            rows.append((name.strip(), int(cumulative) / 1e6))
    # Top-level packages only (their cumulative time holds their submodules).
    packages: dict[str, float] = {}
    for name, seconds in rows:
        root = name.split(".")[0]
        packages[root] = max(packages.get(root, 0.0), seconds)
    return sorted(packages.items(), key=lambda item: -item[1])[:top]


# What every default analysis must import, whatever the project does: the libraries' own floor.
LIBRARIES = "import torch, timm; from diffusers import DDPMScheduler, UNet2DModel"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "r.json"
        analyze = [sys.executable, "-m", "fvit_core.cli", "analyze", str(IMAGE), "--json", str(result_file)]
        commands = {
            "import torch": ([sys.executable, "-c", "import torch"], env),
            "libraries": ([sys.executable, "-c", LIBRARIES], env),
            "libraries, quick exit": ([sys.executable, "-c", LIBRARIES + "; import os; os._exit(0)"], env),
            "fvit analyze": (analyze, env),
            "fvit analyze, full exit": (analyze, {**env, "FVIT_FULL_EXIT": "1"}),
        }
        load_before = os.getloadavg()
        for command, command_env in commands.values():  # warm the file cache
            _wall(command, command_env)
        walls: dict[str, list[float]] = {name: [] for name in commands}
        load_s = []
        for _ in range(args.rounds):
            for name, (command, command_env) in commands.items():
                walls[name].append(_wall(command, command_env))
                if name == "fvit analyze":
                    load_s.append(json.loads(result_file.read_text())["timing"]["load"])
        imports = slowest_imports(analyze, env)
        timing = json.loads(result_file.read_text())["timing"]
    medians = {name: statistics.median(values) for name, values in walls.items()}
    torch_s = medians["import torch"]
    report = {
        "wall_s": walls, "median_s": medians, "analyze_load_s": load_s,
        "ratio_to_import_torch": {name: value / torch_s for name, value in medians.items()},
        "last_timing": timing, "slowest_imports_s": imports,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    for name, values in walls.items():
        print(f"{name:24s} {', '.join(f'{s:.2f}' for s in values)} s (median {medians[name]:.2f}, "
              f"{medians[name] / torch_s:.2f}x import torch)")
    print(f"fvit analyze: of it loading {statistics.median(load_s):.2f} s (imports of timm and diffusers included); "
          f"above the libraries' floor (quick exit) {medians['fvit analyze'] - medians['libraries, quick exit']:.2f} s")
    print(f"load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print("slowest imports (cumulative s): " + ", ".join(f"{n} {s:.2f}" for n, s in imports))
    print("analysis timing (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
