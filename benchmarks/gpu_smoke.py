"""GPU check of the DDS code path: the same functions as on the CPU, the device taken from the models.

    python benchmarks/gpu_smoke.py [--out results.json]

Compares CUDA against CPU with the same noise (float32), bfloat16 against float32 on CUDA, runs
early stopping and the analysis pipeline on CUDA, and times the loop and one analysis there.
Exits non-zero when a check fails. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fvit_core import metrics  # noqa: E402
from fvit_core.models import load_pair  # noqa: E402
from fvit_core.analysis.cache import AnalysisCache  # noqa: E402
from fvit_core.analysis.config import AnalysisConfig  # noqa: E402
from fvit_core.analysis.pipeline import analyze, analyze_many
from fvit_core.method.monte_carlo import EarlyStop  # noqa: E402
from fvit_core.method.faithful_vit import FaithfulViT  # noqa: E402
from fvit_core.runtime.strategy import Runtime  # noqa: E402


def _seconds(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def smooth(pair, images, *, sigma: float, n_samples: int, precision: str, batch_size: int = 256, **kwargs):
    """The FViT's Monte Carlo estimates of ``images`` (DDS at ``sigma``, networks in ``precision``)."""
    fvit = FaithfulViT.from_pair(pair, sigma, runtime=Runtime(precision=precision, batch_size=batch_size))
    return fvit.sample(images, n_samples, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    cpu, gpu = load_pair("default"), load_pair("default", device="cuda")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    run = lambda pair, precision, n=64, **kw: smooth(pair, x, sigma=0.25, n_samples=n, precision=precision,  # noqa: E731
                                                     generator=torch.Generator().manual_seed(1), **kw)
    ref, on_gpu, half = run(cpu, "float32"), run(gpu, "float32"), run(gpu, "bfloat16")
    out: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    out["gpu_vs_cpu_fp32_max_attention_diff"] = max(float(np.abs(a.attention - b.attention).max())
                                                    for a, b in zip(ref, on_gpu))
    out["gpu_vs_cpu_fp32_labels_equal"] = all(a.label == b.label for a, b in zip(ref, on_gpu))
    out["gpu_bf16_vs_fp32_labels_equal"] = all(a.label == b.label for a, b in zip(on_gpu, half))
    out["gpu_bf16_vs_fp32_v8"] = [float(metrics.topk_overlap(a.attention, b.attention, 8)) for a, b in zip(on_gpu, half)]
    stopped = run(gpu, "bfloat16", 256, early_stop=EarlyStop(k=1))
    out["early_stop_n"] = [o.n_samples for o in stopped]
    image = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    for label, extra in (("default", {}), ("fast", {"precision": "bfloat16", "noise_floor_estimator": "bootstrap"})):
        cfg = AnalysisConfig.of(device="cuda", **extra)
        cache = AnalysisCache()
        out[f"analysis_{label}_cold_s"] = _seconds(lambda: analyze(image, cfg, pair=gpu))
        out[f"analysis_{label}_cached_attack_s"] = _seconds(
            lambda: (cache.clear(attacks=False), analyze(image, cfg, pair=gpu, cache=cache)))
        configs = [AnalysisConfig.of(device="cuda", sigma=s, **extra) for s in (0.06, 0.12, 0.18, 0.25, 0.5, 1.0)]
        out[f"sweep6_{label}_s"] = _seconds(lambda: analyze_many(image, configs, pair=gpu), 3)
    big = torch.rand(1, 3, 32, 32)
    for precision in ("float32", "bfloat16"):
        seconds = _seconds(lambda: smooth(gpu, big, sigma=0.25, n_samples=8192, batch_size=4096, precision=precision), 3)
        out[f"loop_{precision}_samples_per_s"] = 8192 / seconds
        out[f"loop_{precision}_gflops"] = 8192 * 0.4532 / seconds
    checks = {
        "cuda matches cpu (float32, same noise)": out["gpu_vs_cpu_fp32_labels_equal"]
        and out["gpu_vs_cpu_fp32_max_attention_diff"] < 1e-3,
        "bfloat16 keeps the labels": out["gpu_bf16_vs_fp32_labels_equal"],
        "early stopping ran": all(1 <= n <= 256 for n in out["early_stop_n"]),
    }
    out["checks"] = checks
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
