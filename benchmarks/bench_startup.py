"""Start-up: `fvit analyze` at the defaults against `python -c "import torch"`, in one run.

    python benchmarks/bench_startup.py --rounds 5 [--out out/startup.json]

Both commands run in fresh processes, alternated round by round so they see the same load; the
wall times (seconds, medians) and their ratio are printed with the load average. Then one
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "r.json"
        analyze = [sys.executable, "-m", "fvit_core.cli", "analyze", str(IMAGE), "--json", str(result_file)]
        torch_only = [sys.executable, "-c", "import torch"]
        load_before = os.getloadavg()
        _wall(torch_only, env), _wall(analyze, env)  # warm the file cache
        torch_s, analyze_s, load_s = [], [], []
        for _ in range(args.rounds):
            torch_s.append(_wall(torch_only, env))
            analyze_s.append(_wall(analyze, env))
            load_s.append(json.loads(result_file.read_text())["timing"]["load"])
        imports = slowest_imports(analyze, env)
        timing = json.loads(result_file.read_text())["timing"]
    report = {
        "import_torch_s": torch_s, "analyze_s": analyze_s, "analyze_load_s": load_s,
        "median_import_torch_s": statistics.median(torch_s), "median_analyze_s": statistics.median(analyze_s),
        "ratio": statistics.median(analyze_s) / statistics.median(torch_s),
        "last_timing": timing, "slowest_imports_s": imports,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    print(f"import torch: {', '.join(f'{s:.2f}' for s in torch_s)} s (median {report['median_import_torch_s']:.2f})")
    print(f"fvit analyze: {', '.join(f'{s:.2f}' for s in analyze_s)} s (median {report['median_analyze_s']:.2f}; "
          f"of it loading {statistics.median(load_s):.2f})")
    print(f"ratio {report['ratio']:.2f} (target <= 2.5); load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print("slowest imports (cumulative s): " + ", ".join(f"{n} {s:.2f}" for n, s in imports))
    print("analysis timing (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
