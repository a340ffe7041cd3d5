"""Cost of the paper's setting at real size: ViT-B/16 (224 px) + guided-diffusion's 256x256 UNet.

Both networks are the real architectures with random weights (timm's vit_base_patch16_224 and
fvit_core.models.adm's conversion of the 256x256_diffusion_uncond flags, 552.8M parameters): the cost of
a DDS sample does not depend on the weights, and nothing is downloaded. Reports

- FLOPs (torch.utils.flop_counter.FlopCounterMode, as executed) of one DDS sample (UNet at 256 px,
  resize, ViT at 224 px with the raw-attention explanation) and of its parts; a PGD-10 attack as 30
  ViT forwards;
- seconds per DDS sample through the engine's own loop (FaithfulViT.sample) in float32
  and bfloat16, at the given batch, and what one analysis at N samples then costs;
- with ``--device cuda``: also one timed analysis at N = 64 in float32 and bfloat16 (samples/s,
  peak GPU memory).

    python benchmarks/bench_realsize.py --device cpu --samples 4          # docs/PERFORMANCE.md
    python benchmarks/bench_realsize.py --device cuda --samples 256 --analysis

Prints one JSON object (and writes it to --out if given). State the load average with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def build_pair(device: str):
    from diffusers import DDPMScheduler

    from fvit_core.models.adm import ADM_PRESETS, build_unet, resolve_flags, scheduler_config
    from fvit_core.models import Denoiser, ModelPair, load_classifier

    arch = resolve_flags(ADM_PRESETS["256x256_diffusion_uncond"])
    unet = build_unet(arch)  # diffusers' random initialisation
    sched = DDPMScheduler(**scheduler_config(arch))
    den = Denoiser(unet=unet, alphas_cumprod=sched.alphas_cumprod.double(), num_train_timesteps=1000,
                   sample_size=256, source="random 256x256_diffusion_uncond")
    clf = load_classifier("vit_base_patch16_224", random_weights=True)  # ImageNet head and class names
    return ModelPair(classifier=clf, denoiser=den, name="realsize-random").to(device)


def gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def count_flops(pair) -> dict:
    from fvit_core.explanations.attention import explain
    from fvit_core.method.denoise import one_shot_denoise

    x = torch.rand(1, 3, 256, 256, device=pair.device)
    with torch.inference_mode():
        unet = gflop(lambda: one_shot_denoise(pair.denoiser, x, 145))
        vit = gflop(lambda: explain(pair.classifier, x, method="raw"))
        forward = gflop(lambda: pair.classifier(x))
    # FlopCounterMode cannot follow torch.autograd.grad (what torchattacks calls), so the attack is
    # counted the usual way: a backward pass costs two forwards, PGD-10 is 10 forward-backward passes.
    return {"unet_gflop": unet, "vit_raw_gflop": vit, "dds_sample_gflop": unet + vit, "vit_forward_gflop": forward,
            "pgd10_attack_gflop_estimate": 30 * forward}


def seconds_per_sample(pair, precision: str, samples: int, batch_size: int, repeats: int) -> dict:
    from fvit_core.method.faithful_vit import FaithfulViT
    from fvit_core.runtime.strategy import Runtime

    x = torch.rand(1, 3, 256, 256)
    fvit = FaithfulViT.from_pair(pair, 0.25, runtime=Runtime(precision=precision, batch_size=batch_size))
    run = lambda: fvit.sample(x, samples, generator=torch.Generator().manual_seed(0))  # noqa: E731
    run()  # warm-up: bfloat16 copies, allocator, kernel choice
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"precision": precision, "samples": samples, "batch_size": batch_size, "seconds": times,
            "seconds_per_sample": median / samples}


def timed_analysis(pair, precision: str, n_samples: int, batch_size: int) -> dict:
    from fvit_core.analysis.config import AnalysisConfig
    from fvit_core.analysis.pipeline import analyze

    image = np.random.default_rng(0).random((3, 256, 256), dtype=np.float32)
    cfg = AnalysisConfig.of(attack="pgd", steps=10, n_samples=n_samples, batch_size=batch_size,
                            device=str(pair.device), precision=precision)
    analyze(image, cfg, pair=pair)  # warm-up
    if pair.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = analyze(image, cfg, pair=pair)
    if pair.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"precision": precision, "n_samples": n_samples, "seconds": seconds, "timing": result.timing,
            "dds_samples_per_second": 2 * n_samples / result.timing["smoothing"],
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if pair.device.type == "cuda" else None}


def machine(device: str) -> dict:
    flags = set()
    if Path("/proc/cpuinfo").exists():
        words = Path("/proc/cpuinfo").read_text().split()
        flags = {w for w in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if w in words}
    return {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
            "cpu_flags": sorted(flags), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_before": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=4, help="DDS samples per timed loop")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--analysis", action="store_true", help="also time whole analyses at N = 64 (GPU)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = machine(args.device)
    start = time.perf_counter()
    pair = build_pair(args.device)
    report["build_seconds"] = time.perf_counter() - start
    report["unet_parameters"] = sum(p.numel() for p in pair.denoiser.unet.parameters())
    report["vit_parameters"] = sum(p.numel() for p in pair.classifier.parameters())
    report["flops"] = count_flops(pair)
    report["per_sample"] = [seconds_per_sample(pair, precision, args.samples, args.batch_size, args.repeats)
                            for precision in ("float32", "bfloat16")]
    if args.analysis:
        report["analysis"] = [timed_analysis(pair, precision, 64, args.batch_size) for precision in ("float32", "bfloat16")]
    report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    report["load_average_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
