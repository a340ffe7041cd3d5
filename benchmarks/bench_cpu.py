"""One default analysis on this CPU, in GFLOP-equivalents of its own float32 matmul rate (issue #16).

Prints the CPU's capabilities (AVX2, AVX-512, native bfloat16: AVX512-BF16 or AMX), the float32
matmul rate measured in this process, and one default analysis (PGD-10 8/255, DDS at sigma 0.25
with the default N, 32 antithetic draws since issue 24, on the clean and the attacked image,
bootstrap noise floor) with the networks in
float32 (what ``precision="auto"`` runs on a CPU without native bfloat16) and, where the CPU has
it, in bfloat16 (``auto`` there):

- ``first``: the first analysis in a fresh process (after the models are loaded);
- ``warm``: the median of ``--repeats`` analyses after it, each with the attack cache cleared;
- the matmul rate: the median of three measurements (after the first analysis, halfway, at the end);
- ``GFLOP-eq``: warm seconds x the float32 matmul rate, the issue's machine-independent cost.

The floor: the same work packed perfectly on the cores. One thread measures the sample loop (N
draws of one image) and the attack; the floor is ``(2 x loop + attack) / cores + metrics``, the
metrics stage being serial Python. An analysis cannot take less, however it is scheduled, unless
the arithmetic itself shrinks.

``--avx2-kernels`` adds a float32 run with ATen, oneDNN and MKL held to AVX2 kernels
(ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS): the kernels a float32-only
AVX2 CPU runs, on this CPU's cores. It is an emulation: clock, caches and FMA width stay this CPU's.

Run alone on an idle machine (``uptime`` is printed): ``python benchmarks/bench_cpu.py``.
Each run is its own fresh process, so "first" is really the first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMAGE = ROOT / "assets" / "samples" / "cifar10_cat_1.png"
# What a float32-only AVX2 CPU runs: every kernel library held to AVX2 (each reads its variable once, at start).
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cpu_capabilities() -> dict:
    """Model name and the flags that decide the fast paths (Linux /proc/cpuinfo; torch's probes)."""
    import torch

    flags: set[str] = set()
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    from fvit_core.runtime.precision import native_bfloat16

    return {"cpu": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "native_bfloat16": native_bfloat16(torch.device("cpu"))}


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """float32 GEMM rate of this process (all intra-op threads), best of ``repeats`` (GFLOP/s)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(precision: str, repeats: int) -> dict:
    """One fresh process's numbers for ``precision`` (run by main in a subprocess)."""
    from fvit_core.analysis.config import AnalysisConfig
    from fvit_core.analysis.pipeline import analyze
    from fvit_core.data.images import load_image
    from fvit_core.models import load_pair

    pair = load_pair("default")
    image = load_image(IMAGE)
    config = AnalysisConfig.of(precision=precision)
    first = _timed(lambda: analyze(image, config, pair=pair))
    rates = [matmul_gflops()]  # the rate drifts on a shared host: measured between the analyses too
    warm, stages = [], []
    for i in range(repeats):  # no cache: every analysis computes afresh
        start = time.perf_counter()
        result = analyze(image, config, pair=pair)
        warm.append(time.perf_counter() - start)
        stages.append(result.timing)
        if i == repeats // 2:
            rates.append(matmul_gflops())
    rates.append(matmul_gflops())
    rate = statistics.median(rates)
    median = statistics.median(warm)
    parts = {name: statistics.median(t.get(name, 0.0) for t in stages) for name in ("attack", "vanilla", "smoothing",
                                                                                     "metrics")}
    single = single_thread_work(pair, image, config)
    floor = (2 * single["sample_loop_s"] + single["attack_s"]) / torch_threads() + parts["metrics"]
    return {"precision": precision, "ran": result.faithful.precision, "kernels": kernel_isa(), "first_s": first,
            "warm_s": median, "warm_min_s": min(warm), "first_over_warm": first / median, "matmul_gflops": rate,
            "matmul_gflops_all": rates, "gflop_equivalents": median * rate, "stages_s": parts, "single_thread_s": single,
            "floor_s": floor, "floor_gflop_equivalents": floor * rate, "load": os.getloadavg()[0]}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def kernel_isa() -> str:
    """The instruction set ATen dispatches its CPU kernels for ("AVX2", "AVX512", ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def single_thread_work(pair, image, config) -> dict:
    """One thread's seconds (median of 3) for the analysis's parallel work: the sample loop of 64
    draws of one image (noise, denoiser, ViT with the explanation, sums) and the attack at batch 1."""
    import torch

    from fvit_core.attacks.runner import run_attack
    from fvit_core.data.images import prepare_image
    from fvit_core.method.faithful_vit import FaithfulViT
    from fvit_core.runtime.strategy import Runtime

    method, attack = config.explanation.method, config.resolved_attack()
    x = torch.from_numpy(prepare_image(image, pair.smoothing_size(config.smoothing.mode)).astype("float32"))[None]
    precision = FaithfulViT.of(pair, config.smoothing, config.runtime).precision_for(method)
    fvit = FaithfulViT.of(pair, config.smoothing, Runtime(precision=precision, parallel=False))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            loop = [_timed(lambda: fvit.sample(x, config.sampling.n_samples, method=method,
                                               generator=torch.Generator().manual_seed(i))) for i in range(4)][1:]
        attacks = [_timed(lambda: run_attack(attack.name, pair.classifier, x, params=attack.params, seed=i))
                   for i in range(4)][1:]
    finally:
        torch.set_num_threads(before)
    return {"sample_loop_s": statistics.median(loop), "attack_s": statistics.median(attacks)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="warm analyses per precision (median)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--avx2-kernels", action="store_true",
                        help="also run float32 with every kernel library held to AVX2 (a float32-only CPU's kernels)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.repeats)))
        return 0
    caps = cpu_capabilities()
    print(json.dumps(caps))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    runs = [("float32", {})] + ([("bfloat16", {})] if caps["native_bfloat16"] else [])
    if args.avx2_kernels:
        runs.append(("float32", AVX2_KERNELS))
    for precision, env in runs:
        out = subprocess.run([sys.executable, __file__, "--child", precision, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, **env})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        single = row["single_thread_s"]
        print(f"{precision:9s} {row['kernels']:7s} first {row['first_s']:.3f} s, warm {row['warm_s']:.3f} s "
              f"(min {row['warm_min_s']:.3f}), first/warm {row['first_over_warm']:.2f}, matmul "
              f"{row['matmul_gflops']:.0f} GFLOP/s ({'/'.join(f'{r:.0f}' for r in row['matmul_gflops_all'])}), "
              f"{row['gflop_equivalents']:.0f} GFLOP-eq; stages "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["stages_s"].items())
              + f"; one thread: sample loop {single['sample_loop_s']:.3f} s, attack {single['attack_s']:.3f} s; "
              f"floor {row['floor_s']:.3f} s = {row['floor_gflop_equivalents']:.0f} GFLOP-eq; load {row['load']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": caps, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
