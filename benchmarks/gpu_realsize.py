"""Timed run of the analysis pipeline with a real-size pair on a GPU (random weights).

A timm ViT-B/16 at 224x224 (196 patches, 86M parameters) and a 256x256 diffusers UNet2DModel of
the size of google/ddpm-ema-church-256 (113M parameters), both with random weights (no downloads):
the cost per DDS sample does not depend on the weights. Prints one JSON object.

    python benchmarks/gpu_realsize.py --device cuda --n-samples 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def build_pair(device: str, smoke: bool = False):
    from diffusers import DDPMScheduler, UNet2DModel

    from fvit_core.models import Denoiser, ModelPair, PixelViT, create_vit

    vit = create_vit("vit_tiny_patch16_224" if smoke else "vit_base_patch16_224", num_classes=1000)
    clf = PixelViT(vit, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    if smoke:  # a quick check of the code path on the CPU
        unet = UNet2DModel(sample_size=64, block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
                           down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).eval()
        den = Denoiser(unet=unet, alphas_cumprod=DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double(),
                       num_train_timesteps=1000, sample_size=64, source="random")
        return ModelPair(classifier=clf, denoiser=den, name="smoke").to(device)
    unet = UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    ).eval()
    den = Denoiser(unet=unet, alphas_cumprod=DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double(),
                   num_train_timesteps=1000, sample_size=256, source="random")
    return ModelPair(classifier=clf, denoiser=den, name="realsize-random").to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny models, to check the code path quickly")
    args = parser.parse_args()
    from fvit_core.pipeline import AnalysisConfig, analyze

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    pair = build_pair(args.device, args.smoke)
    image = np.random.default_rng(0).random((3, 224, 224), dtype=np.float32)
    cfg = AnalysisConfig(attack="pgd", steps=10, n_samples=args.n_samples, batch_size=args.batch_size,
                         device=args.device, bootstrap=0, k=16,
                         noise_floor_estimator="independent", precision="float32")
    analyze(image, cfg, pair=pair)  # warm-up (kernel selection, allocator)
    times, parts = [], []
    for _ in range(args.repeats):
        sync(args.device)
        start = time.perf_counter()
        result = analyze(image, cfg, pair=pair)
        sync(args.device)
        times.append(time.perf_counter() - start)
        parts.append(result.timing)
    samples = 3 * args.n_samples  # clean, attacked, noise-floor estimate
    median = statistics.median(times)
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "tf32": True,
        "classifier": "vit_base_patch16_224 (random)", "denoiser": "UNet2DModel 256x256, 113M params (random)",
        "n_samples": args.n_samples, "analysis_seconds_median": median, "analysis_seconds": times,
        "timing_parts_last": parts[-1], "dds_samples_per_second": samples / parts[-1]["smoothing"],
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if args.device.startswith("cuda") else None,
    }, indent=2))


if __name__ == "__main__":
    main()
