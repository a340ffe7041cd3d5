"""What a cached ``torch.compile`` would give the DDS sample loop on this CPU (issue #16).

One thread, float32, the default pair, a batch of ``--batch`` draws. Per draw, in milliseconds:

- the UNet's noise prediction, eager and compiled (inductor, ``freezing`` on, which prepacks the
  convolution weights for oneDNN and fuses the pointwise operations around them);
- the ViT: eager with the ``raw`` explanation (the fast path the sample loop takes), eager plain
  forward, and the plain forward compiled (the raw fast path reads the qkv weights itself, so
  the compiled graph is the plain forward);
- the compile's seconds in a fresh process, twice: with an empty inductor cache ("cold") and with
  the cache the first process left ("cached": what a second dashboard session pays);
- the largest absolute difference between the compiled and the eager outputs.

Each process is fresh and the cache lives in a temporary folder, deleted at the end.
``--avx2-kernels`` holds every kernel library to AVX2, as bench_cpu.py does.

    python benchmarks/bench_compile.py --json out/bench_compile.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def per_draw_ms(fn, batch: int, repeats: int) -> float:
    """Median milliseconds per draw of ``fn`` (one batch per call), after three warm-up calls."""
    from bench_dds import timed

    return statistics.median(timed(fn, repeats, warmup=3)) / batch * 1e3


def measure(batch: int, repeats: int) -> dict:
    """One fresh process's numbers (run by main in a subprocess, once cold, once cached)."""
    import torch
    import torch._inductor.config as inductor_config

    from fvit_core.analysis.config import AnalysisConfig
    from fvit_core.explanations.attention import explain
    from fvit_core.method.denoise import timestep_for_sigma
    from fvit_core.models import load_pair

    torch.set_num_threads(1)
    inductor_config.freezing = True  # weights are constants: oneDNN prepacking and conv+pointwise fusion
    pair = load_pair("default")
    unet, vit = pair.denoiser.unet, pair.classifier
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=generator)
    t = torch.full((batch,), timestep_for_sigma(pair.denoiser.alphas_cumprod, AnalysisConfig().smoothing.sigma), dtype=torch.long)
    with torch.inference_mode():
        eager = {"unet_ms": per_draw_ms(lambda: unet(x, t).sample, batch, repeats),
                 "vit_raw_ms": per_draw_ms(lambda: explain(vit, x, method="raw"), batch, repeats),
                 "vit_forward_ms": per_draw_ms(lambda: vit(x), batch, repeats)}
        start = time.perf_counter()
        compiled_unet = torch.compile(lambda a, b: unet(a, b).sample)
        compiled_unet(x, t)
        unet_compile_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled_vit = torch.compile(vit)
        compiled_vit(x)
        vit_compile_s = time.perf_counter() - start
        compiled = {"unet_ms": per_draw_ms(lambda: compiled_unet(x, t), batch, repeats),
                    "vit_forward_ms": per_draw_ms(lambda: compiled_vit(x), batch, repeats)}
        diff = {"unet": float((compiled_unet(x, t) - unet(x, t).sample).abs().max()),
                "vit_logits": float((compiled_vit(x) - vit(x)).abs().max())}
    return {"kernels": torch.backends.cpu.get_cpu_capability(), "eager": eager, "compiled": compiled,
            "compile_s": {"unet": unet_compile_s, "vit": vit_compile_s}, "max_abs_diff": diff,
            "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    from bench_cpu import AVX2_KERNELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="draws per forward pass")
    parser.add_argument("--repeats", type=int, default=15, help="timed batches per network (median)")
    parser.add_argument("--avx2-kernels", action="store_true", help="hold every kernel library to AVX2")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.batch, args.repeats)))
        return 0
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fvit-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, **(AVX2_KERNELS if args.avx2_kernels else {})}
        for run in ("cold", "cached"):
            out = subprocess.run([sys.executable, __file__, "--child", "--batch", str(args.batch),
                                  "--repeats", str(args.repeats)], capture_output=True, text=True, check=True,
                                 cwd=ROOT, env=env)
            row = rows[run] = json.loads(out.stdout.strip().splitlines()[-1])
            eager, compiled = row["eager"], row["compiled"]
            print(f"{run:6s} {row['kernels']}: UNet {eager['unet_ms']:.2f} -> {compiled['unet_ms']:.2f} ms/draw, "
                  f"compile {row['compile_s']['unet']:.1f} s; ViT raw {eager['vit_raw_ms']:.2f}, forward "
                  f"{eager['vit_forward_ms']:.2f} -> {compiled['vit_forward_ms']:.2f} ms/draw, compile "
                  f"{row['compile_s']['vit']:.1f} s; max |diff| UNet {row['max_abs_diff']['unet']:.1e}, logits "
                  f"{row['max_abs_diff']['vit_logits']:.1e}; load {row['load']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
