"""DDS performance benchmark on this machine: one command, one table, docs/PERFORMANCE.md.

    python benchmarks/bench_dds.py                      # print the tables (about 10 minutes)
    python benchmarks/bench_dds.py --out docs/PERFORMANCE.md
    python benchmarks/bench_dds.py --quick              # fewer repeats and images (smoke run)

What it measures, all in one process on the default pair (models.load_pair("default")):

- the machine's dense matrix-multiply rate (float32 and bfloat16, square 1024..2048, median of
  repeats): the reference limit;
- FLOPs per DDS sample, counted with torch.utils.flop_counter.FlopCounterMode over the loop
  as it runs (and over the full networks, for comparison), and the achieved GFLOP/s of the DDS
  sample loop as a fraction of the reference rate (float32 and bfloat16);
- median wall time of one full analysis (PGD-10 on the vanilla ViT, vanilla, DDS with N = 16,
  64, 256 on clean and attacked and the noise floor), cold (attack cache cleared);
- a sweep over 6 sigmas at N = 64 (pipeline.analyze_many: one attack, 6 smoothings);
- the dashboard's slider change: analyze at a new sigma (attack cached) + the Compare page's
  figures rendered to PNG through fvit_core.report (if present);
- the dashboard's attack change: analyze at a new eps (clean estimates cached) + the same figures;
- the dashboard's k change: analyze at a new k (attack and estimates cached) + the same figures;
- batch evaluation (fvit eval) images/s and certification (fvit certify) samples/s;
- peak memory, and memory against N (fresh subprocesses);
- a straightforward reference implementation in the same run: one sample at a time, attention
  captured for every layer and kept for every sample;
- bfloat16 against float32 on test images (same noise): label agreement, top-k overlap, next to
  the Monte Carlo noise floor; and the bootstrap noise floor against the independent one;
- early stopping: at which N the rule stops;
- where the time goes (profile by operator, thread count, batch size).

The tables are printed and, with --out, written between the markers of the generated section
of the Markdown file (the hand-written text around them is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fvit_core import metrics  # noqa: E402
from fvit_core.analysis import noise_floor  # noqa: E402
from fvit_core.analysis.cache import AnalysisCache  # noqa: E402
from fvit_core.attacks.runner import run_attack  # noqa: E402
from fvit_core.explanations.attention import capture_attention, explain, normalise_patch_weights  # noqa: E402
from fvit_core.method.denoise import one_shot_denoise, timestep_for_sigma  # noqa: E402
from fvit_core.data.images import load_image, prepare_image  # noqa: E402
from fvit_core.models import ModelPair, load_pair  # noqa: E402
from fvit_core.analysis.config import AnalysisConfig  # noqa: E402
from fvit_core.analysis.pipeline import analyze, analyze_many
from fvit_core.method.monte_carlo import EarlyStop  # noqa: E402
from fvit_core.method.faithful_vit import FaithfulViT  # noqa: E402
from fvit_core.runtime import strategy  # noqa: E402
from fvit_core.runtime.precision import models_in_precision  # noqa: E402
from fvit_core.runtime.strategy import Runtime  # noqa: E402

# The dashboard's server-wide cache, as app/session.py keeps it (the dashboard sections time it).
CACHE = AnalysisCache()


def smooth(pair: ModelPair, images: torch.Tensor, *, sigma: float, n_samples: int, precision: str = "float32",
           batch_size: int = 256, **sample_kwargs):
    """The FViT's Monte Carlo estimates of ``images`` at ``sigma`` in ``precision`` (DDS)."""
    fvit = FaithfulViT.from_pair(pair, sigma, runtime=Runtime(precision=precision, batch_size=batch_size))
    return fvit.sample(images, n_samples, **sample_kwargs)

DATA = Path("/work/shared/data/cifar10-test-2k")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SWEEP_SIGMAS = (0.06, 0.12, 0.18, 0.25, 0.5, 1.0)
CAREFUL = dict(precision="float32", noise_floor_estimator="independent")  # the settings before the fast defaults


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def matmul_rate(dtype: torch.dtype, repeats: int) -> float:
    """Best over sizes of the median GFLOP/s of an n x n matrix product."""
    best = 0.0
    for n in (1024, 1536, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        best = max(best, 2 * n**3 / median(timed(lambda: a @ b, repeats, warmup=2)) / 1e9)
    return best


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f" {f}" in text)
    return {"cpu": cpu, "cores": str(os.cpu_count()), "flags": flags, "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def test_images(count: int) -> list[np.ndarray]:
    """``count`` CIFAR-10 test images, round-robin over the classes (deterministic)."""
    classes = sorted(p for p in DATA.iterdir() if p.is_dir())
    files = [sorted(c.glob("*.jpg")) for c in classes]
    picked = [files[i % len(files)][i // len(files)] for i in range(count)]
    return [load_image(str(f)) for f in picked]


# --------------------------------------------------------------------------------------------
# The straightforward reference implementation (one sample at a time, everything kept)
# --------------------------------------------------------------------------------------------


def reference_analysis(pair: ModelPair, image: np.ndarray, cfg: AnalysisConfig) -> dict:
    """The analysis written the obvious way: every sample alone, every layer's full attention
    captured and kept for every sample, means and bootstrap computed from the kept lists."""
    clf = pair.classifier
    x = torch.from_numpy(prepare_image(image, clf.img_size).astype(np.float32))[None]
    attack, sigma, n, k = cfg.resolved_attack(), cfg.smoothing.sigma, cfg.sampling.n_samples, cfg.explanation.k
    x_adv = run_attack(attack.name, clf, x, params=attack.params, seed=cfg.seed)
    t_star = timestep_for_sigma(pair.denoiser.alphas_cumprod, sigma)
    g = torch.Generator().manual_seed(cfg.seed)
    estimates = []
    with torch.no_grad():
        vanilla = [_reference_forward(clf, img) for img in (x, x_adv)]
        for img in (x, x_adv, x):
            kept = []
            for _ in range(n):
                noisy = img + torch.randn(img.shape, generator=g) * sigma
                kept.append(_reference_forward(clf, one_shot_denoise(pair.denoiser, noisy, t_star)))
            estimates.append(kept)
    means = [np.mean([w for w, _, _ in kept], axis=0) for kept in estimates]
    rng = np.random.default_rng(cfg.seed)
    samples = [np.stack([w for w, _, _ in kept]) for kept in estimates]
    ci = _reference_bootstrap(samples[0], samples[1], k, cfg.floor.bootstrap, rng)
    return {"vanilla": vanilla, "overlap": metrics.topk_overlap(means[0], means[1], k),
            "floor": metrics.topk_overlap(means[0], means[2], k), "ci": ci}


def _reference_forward(clf, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[torch.Tensor]]:
    with capture_attention(clf) as record:
        logits = clf(x)
    maps = [m.clone() for m in record.layer_maps()]  # every layer, full (heads, T, T), kept
    raw = normalise_patch_weights(maps[-1].mean(1)[:, 0, clf.num_prefix_tokens:])
    return raw[0].double().numpy(), torch.softmax(logits, -1)[0].double().numpy(), maps


def _reference_bootstrap(a: np.ndarray, b: np.ndarray, k: int, n_boot: int, rng) -> tuple[float, float]:
    values = [metrics.topk_overlap(a[rng.integers(0, len(a), len(a))].mean(0),
                                   b[rng.integers(0, len(b), len(b))].mean(0), k) for _ in range(n_boot)]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "", first: bool = False) -> None:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        if note:
            lines += ["", note]
        self.sections.insert(0 if first else len(self.sections), (title, lines))
        print(f"\n## {title}\n" + "\n".join(lines), flush=True)

    def markdown(self) -> str:
        return "\n\n".join(f"### {title}\n\n" + "\n".join(lines) for title, lines in self.sections)


def loop_flops(pair: ModelPair, precision: str) -> tuple[float, float, float]:
    """(executed FLOPs per sample of the loop, full UNet FLOPs/img, full ViT FLOPs/img)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(3, 3, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the counter sees this thread only: no workers while counting
    try:
        with FlopCounterMode(display=False) as counter:
            smooth(pair, x, sigma=0.25, n_samples=16, precision=precision, generator=torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(threads)
    per_sample = counter.get_total_flops() / 48
    batch = torch.rand(16, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as unet:
        one_shot_denoise(pair.denoiser, batch, 145)
    with torch.no_grad(), FlopCounterMode(display=False) as vit:
        pair.classifier(batch)
    return per_sample, unet.get_total_flops() / 16, vit.get_total_flops() / 16


def section_rates(rep: Report, pair: ModelPair, repeats: int) -> None:
    fp32, bf16 = matmul_rate(torch.float32, repeats * 2), matmul_rate(torch.bfloat16, repeats * 2)
    executed, unet, vit = loop_flops(pair, "float32")
    x = torch.rand(3, 3, 32, 32)
    rows, loop = [], {}
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for precision in ("float32", "bfloat16"):
        run = lambda: smooth(pair, x, sigma=0.25, n_samples=64, precision=precision,  # noqa: E731
                             generator=torch.Generator().manual_seed(0))
        run()
        seconds, ratios = [], []
        for _ in range(repeats):  # interleaved with the matmul, so a load change hits both
            reference = 2 * 2048**3 / min(timed(lambda: a @ b, 2, warmup=0)) / 1e9
            seconds.append(timed(run, 1, warmup=0)[0])
            ratios.append(executed * 192 / seconds[-1] / 1e9 / reference)
        rate = executed * 192 / median(seconds) / 1e9
        loop[precision] = rate
        loop[precision + "_interleaved"] = median(ratios)
        rows.append([f"DDS loop, {precision} (192 samples: clean, attacked, clean again; N = 64)",
                     f"{median(seconds) * 1e3:.0f} ms", f"{median(seconds) / 192 * 1e3:.2f} ms", f"{rate:.0f}",
                     f"{rate / fp32:.0%} of fp32 (interleaved: {median(ratios):.0%})"
                     + (f", {rate / bf16:.0%} of bf16" if precision == "bfloat16" else "")])
    rep.numbers.update(matmul_fp32=fp32, matmul_bf16=bf16, loop_fp32=loop["float32"], loop_bf16=loop["bfloat16"],
                       loop_fp32_interleaved_fraction=loop["float32_interleaved"], flops_per_sample=executed)
    rep.table(
        "Arithmetic rate: reference limit and the DDS sample loop",
        ["what", "time", "per sample", "GFLOP/s", "fraction of the matmul rate"],
        [["dense matmul float32 (reference limit)", "", "", f"{fp32:.0f}", "100%"],
         ["dense matmul bfloat16", "", "", f"{bf16:.0f}", f"{bf16 / fp32:.0%} of fp32"], *rows],
        note=(f"FLOPs per DDS sample (FlopCounterMode, as executed): {executed / 1e9:.3f} GFLOP "
              f"(the full networks: UNet {unet / 1e9:.3f} + ViT {vit / 1e9:.3f} = {(unet + vit) / 1e9:.3f} GFLOP; "
              "the loop skips the last ViT block's non-[CLS] tokens). Achieved rate = executed FLOPs / median wall time; "
              "'interleaved' is the median of per-repeat ratios to a 2048^2 float32 matmul timed just before."),
    )


def _analysis_seconds(pair: ModelPair, image: np.ndarray, cfg: AnalysisConfig, repeats: int) -> tuple[float, dict]:
    parts: list[dict] = []

    def run() -> None:  # cold: no cache
        parts.append(analyze(image, cfg, pair=pair).timing)

    seconds = median(timed(run, repeats))
    parts = parts[1:]  # drop the warm-up
    return seconds, {k: median([p.get(k, 0.0) for p in parts]) for k in ("attack", "vanilla", "smoothing", "metrics")}


def section_analysis(rep: Report, pair: ModelPair, image: np.ndarray, repeats: int) -> None:
    rows = []
    for label, extra in (("default (auto precision, bootstrap floor)", {}), ("careful (float32, independent floor)", CAREFUL),
                         ("bfloat16, independent floor", {"precision": "bfloat16", "noise_floor_estimator": "independent"})):
        for n in (16, 64, 256):
            seconds, parts = _analysis_seconds(pair, image, AnalysisConfig.of(n_samples=n, **extra), repeats)
            rep.numbers[f"analysis_{label.split()[0]}_{n}"] = seconds
            if label.startswith("bfloat16") and n != 64:
                continue
            rows.append([label, n, f"{seconds:.3f}", *(f"{parts[k]:.3f}" for k in ("attack", "vanilla", "smoothing",
                                                                                   "metrics"))])
    rep.table("One full analysis (PGD-10 8/255 on the vanilla ViT, vanilla, DDS sigma 0.25; cold)",
              ["settings", "N", "median s", "attack", "vanilla", "smoothing", "metrics"], rows,
              note="Cold: the attack cache is cleared before every run. Median of the runs; the stage columns are "
                   "medians too, so they need not add up to the total.")


def section_sweep(rep: Report, pair: ModelPair, image: np.ndarray, repeats: int) -> None:
    rows = []
    for label, extra in (("default (auto precision, bootstrap floor)", {}), ("careful (float32, independent floor)", CAREFUL)):
        configs = [AnalysisConfig.of(sigma=s, n_samples=64, **extra) for s in SWEEP_SIGMAS]

        def run() -> None:  # a private cache for the sweep's length: one attack
            analyze_many(image, configs, pair=pair)

        seconds = median(timed(run, max(repeats - 2, 1)))
        rep.numbers[f"sweep_{label.split()[0]}"] = seconds
        rows.append([label, f"{seconds:.2f}", f"{seconds / len(configs):.3f}"])
    rep.table(f"Sigma sweep: {len(SWEEP_SIGMAS)} values {SWEEP_SIGMAS}, N = 64 (analyze_many: one attack)",
              ["settings", "median s", "per sigma"], rows)


def _figures_time(result) -> float | None:
    try:
        from fvit_core.report import interactive, style
    except ImportError:
        return None
    start = time.perf_counter()
    scale = style.map_scale(result)
    for which in style.MODEL_KEYS:  # the Compare page, as app/views/compare.py renders it
        interactive.plotly_attention_maps(result, which, scale=scale).to_json()  # what st.plotly_chart sends
    return time.perf_counter() - start


def _dashboard_changes(rep: Report, pair: ModelPair, image: np.ndarray, repeats: int, name: str,
                       change: Callable[[int], dict]) -> list[list]:
    """Rows of (settings, median s, analyze, figures) for ``repeats`` analyses of ``image`` with
    ``change(i)`` applied (a setting the dashboard changes), after one analysis that fills the
    caches, as the dashboard's previous result did."""
    rows = []
    for label, extra in (("default (auto precision, bootstrap floor)", {}), ("careful (float32, independent floor)", CAREFUL)):
        analyze(image, AnalysisConfig.of(**extra), pair=pair, cache=CACHE)
        totals, compute, drawing = [], [], []
        for i in range(repeats):
            config = AnalysisConfig.of(**{**extra, **change(i)})
            start = time.perf_counter()
            result = analyze(image, config, pair=pair, cache=CACHE)
            mid = time.perf_counter()
            fig = _figures_time(result)
            totals.append(time.perf_counter() - start)
            compute.append(mid - start)
            drawing.append(fig or 0.0)
        rep.numbers[f"{name}_{label.split()[0]}"] = median(totals)
        rows.append([label, f"{median(totals):.3f}", f"{median(compute):.3f}",
                     f"{median(drawing):.3f}" if fig is not None else "report absent"])
    return rows


def section_slider(rep: Report, pair: ModelPair, image: np.ndarray, repeats: int) -> None:
    def new_sigma(i: int) -> dict:
        CACHE.clear(attacks=False)  # a new sigma: its estimates are not cached yet, the attack is
        return {"sigma": (0.12, 0.5)[i % 2]}

    rows = _dashboard_changes(rep, pair, image, repeats, "slider", new_sigma)
    rep.table("Dashboard: sigma slider change to updated figures (N = 64; attack cached)",
              ["settings", "median s", "analyze", "figures (Compare page, plotly JSON)"], rows,
              note="Same code path as the app's server side: pipeline.analyze, then the Compare page's two "
                   "fvit_core.report.interactive.plotly_attention_maps serialised to JSON. The browser's part (keypress to "
                   "maps redrawn) is measured by tests/test_e2e_browser.py, see 'Dashboard in the browser'.")


def section_attack_change(rep: Report, pair: ModelPair, image: np.ndarray, repeats: int) -> None:
    def new_eps(i: int) -> dict:
        # A new eps every time, with no attack cached (the other settings' run crafted these too):
        # the attack crafted and its image smoothed afresh, the clean estimates cached.
        CACHE.clear(estimates=False)
        return {"eps": (3 + i) / 255}

    rows = _dashboard_changes(rep, pair, image, repeats, "attack_change", new_eps)
    rep.table("Dashboard: attack change (eps) to updated figures (N = 64; clean estimates cached)",
              ["settings", "median s", "analyze", "figures (Compare page, plotly JSON)"], rows,
              note="The attack is crafted afresh and the attacked image smoothed; the clean image's estimates come "
                   "from the analysis cache, as when the dashboard's attack controls change.")


def section_k_change(rep: Report, pair: ModelPair, image: np.ndarray, repeats: int) -> None:
    rows = _dashboard_changes(rep, pair, image, repeats, "k_change", lambda i: {"k": 4 + i % 8})
    rep.table("Dashboard: k slider change to updated figures (N = 64; attack and estimates cached)",
              ["settings", "median s", "analyze", "figures (Compare page, plotly JSON)"], rows,
              note="No setting a smoothing call reads changed, so pipeline.analyze reuses both images' estimates and "
                   "recomputes the metrics, noise floor and certificates at the new k (the same numbers as a fresh "
                   "analysis: tests/test_pipeline.py).")


def section_batch(rep: Report, images_dir: Path, count: int) -> None:
    from fvit_core.batch.certification import run_certify
    from fvit_core.batch.config import CertifyConfig, EvalConfig
    from fvit_core.batch.evaluate import run_eval

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = EvalConfig.of(data=str(images_dir), out=f"{tmp}/eval", limit=count, progress=False, figures=False)
        seconds = run_eval(cfg).seconds
        rep.numbers["eval_images_per_s"] = count / seconds
        rows.append([f"fvit eval (defaults: PGD 8/255, vanilla + DDS sigma 0.25, N = {cfg.sampling.n_samples}, "
                     f"{cfg.floor.estimator} floor, perturbation test)",
                     count, f"{seconds:.1f}", f"{count / seconds:.2f} images/s"])
        ccfg = CertifyConfig.of(data=str(images_dir), out=f"{tmp}/cert", limit=max(count // 4, 1), n0=100, n=1000,
                                progress=False, figures=False)
        seconds = run_certify(ccfg).seconds
        samples = ccfg.batch.limit * (ccfg.certificate.n0 + ccfg.certificate.n)
        rep.numbers["certify_samples_per_s"] = samples / seconds
        rows.append(["fvit certify (sigma 0.25, n0 = 100, n = 1000)", ccfg.batch.limit, f"{seconds:.1f}",
                     f"{samples / seconds:.0f} samples/s"])
    rep.table("Batch throughput (defaults of each command, precision auto)", ["command", "images", "s", "throughput"], rows,
              note="Wall time of the whole command (model loading and reports included).")


_MEMORY_CHILD = """
import gc, sys, torch
sys.path.insert(0, {root!r})
from fvit_core.models import load_pair
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.runtime.strategy import Runtime
pair = load_pair("default")
status = lambda key: int([line.split()[1] for line in open("/proc/self/status") if line.startswith(key)][0])
fvit = FaithfulViT.from_pair(pair, 0.25, runtime=Runtime(precision={precision!r}))
for _ in range(2):  # the second call shows whether anything stayed behind
    fvit.sample(torch.rand(1, 3, 32, 32), {n})
    gc.collect()
print(status("VmHWM"), status("VmRSS"))
"""


def section_memory(rep: Report, sizes: tuple[int, ...]) -> None:
    rows, peaks, after = [], {}, {}
    for precision in ("float32", "bfloat16"):
        for n in sizes:
            code = _MEMORY_CHILD.format(root=str(ROOT), n=n, precision=precision)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            peak, steady = (int(v) for v in out.stdout.split()[-2:])
            rows.append([precision, n, f"{peak / 1024:.0f} MiB", f"{steady / 1024:.0f} MiB"])
            peaks.setdefault(precision, []).append(peak)
            after.setdefault(precision, []).append(steady)
    # The two largest N (8x apart): both have full batches in flight, so any growth is a store
    # that grows with N. The smallest N runs smaller batches, hence its lower memory.
    rep.numbers["memory_ratio"] = max(v[-1] / v[-2] for v in peaks.values())
    rep.numbers["memory_steady_ratio"] = max(v[-1] / v[-2] for v in after.values())
    this = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rep.numbers["peak_rss_mib"] = this
    rep.table("Memory: resident set of a fresh process smoothing one image with N samples, twice",
              ["precision", "N", "peak RSS (VmHWM)", "RSS after the second call"], rows,
              note=f"Streamed sums: what a call keeps is O(patches + classes), not O(N); memory in use is set by the "
                   f"batches in flight (at most 2 per worker), which is why the smallest N (two half-size batches) "
                   f"needs less and the larger ones the same. The RSS after a second call is the steady state. Peak RSS of this whole "
                   f"benchmark process: {this:.0f} MiB (models, test images, every section).")


def section_reference(rep: Report, pair: ModelPair, image: np.ndarray, repeats: int) -> None:
    cfg = AnalysisConfig.of(n_samples=64)
    ref = median(timed(lambda: reference_analysis(pair, image, cfg), max(repeats - 2, 1)))
    careful = rep.numbers.get("analysis_careful_64") or _analysis_seconds(pair, image, AnalysisConfig.of(**CAREFUL),
                                                                          repeats)[0]
    default = rep.numbers.get("analysis_default_64") or _analysis_seconds(pair, image, cfg, repeats)[0]
    rep.numbers.update(reference_s=ref, speedup_default=ref / default, speedup_careful=ref / careful)
    rep.table("Against a straightforward reference implementation (N = 64, same attack, same run)",
              ["implementation", "median s", "speed-up"],
              [["reference: one sample at a time, every layer's attention kept for every sample", f"{ref:.2f}", "1x"],
               ["this code, default settings (auto precision, bootstrap floor)", f"{default:.3f}", f"{ref / default:.1f}x"],
               ["this code, careful settings (float32, independent floor)", f"{careful:.3f}", f"{ref / careful:.1f}x"]])


def section_accuracy(rep: Report, pair: ModelPair, count: int) -> None:
    """float32 vs bfloat16 with the same noise; the Monte Carlo floor; bootstrap vs independent floor."""
    x = torch.stack([torch.from_numpy(prepare_image(im, pair.classifier.img_size).astype(np.float32)) for im in test_images(count)])
    kwargs = dict(sigma=0.25, n_samples=64, keep_samples=True)
    full = smooth(pair, x, precision="float32", generator=torch.Generator().manual_seed(1), **kwargs)
    half = smooth(pair, x, precision="bfloat16", generator=torch.Generator().manual_seed(1), **kwargs)
    other = smooth(pair, x, precision="float32", generator=torch.Generator().manual_seed(2), **kwargs)
    k = 8
    same_label = np.mean([a.label == b.label for a, b in zip(full, half)])
    mc_label = np.mean([a.label == c.label for a, c in zip(full, other)])
    v_half = np.array([metrics.topk_overlap(a.attention, b.attention, k) for a, b in zip(full, half)])
    v_floor = np.array([metrics.topk_overlap(a.attention, c.attention, k) for a, c in zip(full, other)])
    vote_agree = np.mean([np.abs(a.votes - b.votes).sum() / 2 / a.n_samples for a, b in zip(full, half)])
    prob_diff = np.mean([np.abs(a.probs - b.probs).max() for a, b in zip(full, half)])
    boot = np.array([noise_floor.bootstrap_noise_floor(a.samples_attention, k, 200, np.random.default_rng(i))[0]
                     for i, a in enumerate(full)])
    diff = boot - v_floor
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    rep.numbers.update(bf16_label_agreement=same_label, bf16_overlap=v_half.mean(), mc_floor=v_floor.mean(),
                       boot_floor=boot.mean(), boot_minus_indep=diff.mean(), boot_minus_indep_se=se)
    rep.table(f"bfloat16 against float32 ({count} CIFAR-10 test images, DDS sigma 0.25, N = 64, top-{k})",
              ["comparison", "value"],
              [["smoothed label: bf16 = fp32 (same noise)", f"{same_label:.0%}"],
               ["smoothed label: fp32 = fp32 with independent noise (Monte Carlo)", f"{mc_label:.0%}"],
               ["V_8 fp32 vs bf16, same noise (mean)", f"{v_half.mean():.3f} (min {v_half.min():.3f})"],
               ["V_8 fp32 vs fp32, independent noise = the noise floor (mean)", f"{v_floor.mean():.3f}"],
               ["hard votes that changed fp32 -> bf16 (mean fraction)", f"{vote_agree:.3f}"],
               ["largest absolute difference of y~ fp32 and y~ bf16 per image (mean)", f"{prob_diff:.4f}"],
               ["noise floor, bootstrap estimator (mean over images)", f"{boot.mean():.3f}"],
               ["bootstrap minus independent floor (mean +- 2 SE)", f"{diff.mean():+.3f} +- {2 * se:.3f}"]],
              note="Same noise: both precisions see identical draws, so any difference is bfloat16's. The "
                   "independent-noise rows are the Monte Carlo spread the result already carries.")


def section_early_stop(rep: Report, pair: ModelPair, count: int) -> None:
    x = torch.stack([torch.from_numpy(prepare_image(im, pair.classifier.img_size).astype(np.float32)) for im in test_images(count)])
    rows = []
    for k in (1, 3, 8):
        rule = EarlyStop(k=k, alpha=0.05, check_every=16, min_samples=32)
        stops = [smooth(pair, x[i:i + 1], sigma=0.25, n_samples=256, precision="bfloat16", early_stop=rule,
                        generator=torch.Generator().manual_seed(i))[0].n_samples for i in range(len(x))]
        rows.append([k, f"{np.mean([s < 256 for s in stops]):.0%}", f"{np.median(stops):.0f}",
                     f"{np.mean(stops):.0f}", f"{rule.z(256):.2f}"])
        rep.numbers[f"early_stop_k{k}_mean_n"] = float(np.mean(stops))
    rep.table(f"Early stopping ({count} test images alone, budget N = 256, alpha 0.05, checks every 16 from 32)",
              ["k", "stopped early", "median N", "mean N", "z per comparison"], rows,
              note="Rule: monte_carlo.EarlyStop (label and every top-k vs rest pair separated by z standard errors; "
                   "Bonferroni over the 14 looks).")


def section_profile(rep: Report, pair: ModelPair) -> None:
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(3, 3, 32, 32)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the profiler follows this thread: run the loop here, not on the workers
    for precision in ("float32", "bfloat16"):
        smooth(pair, x, sigma=0.25, n_samples=64, precision=precision)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            smooth(pair, x, sigma=0.25, n_samples=64, precision=precision)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        for event in events[:8]:
            rows.append([precision, event.key, f"{event.self_cpu_time_total / total:.0%}", event.count])
    torch.set_num_threads(threads)
    rep.table("Where the loop's time goes (torch.profiler, self CPU time, 192 samples, one thread)",
              ["precision", "operator", "share", "calls"], rows)


def section_stages(rep: Report, pair: ModelPair) -> None:
    """UNet vs ViT vs the rest of the loop, and thread / batch-size settings."""
    x = torch.rand(96, 3, 32, 32)
    t = 145
    rows = []
    with torch.inference_mode():
        for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            clf, den = models_in_precision(pair.classifier, pair.denoiser, precision)
            den_s = median(timed(lambda: one_shot_denoise(den, x, t), 3))
            vit_s = median(timed(lambda: explain(clf, x.to(dtype)), 3))
            rows.append([precision, f"{den_s / 96 * 1e3:.2f} ms", f"{vit_s / 96 * 1e3:.2f} ms",
                         f"{den_s / (den_s + vit_s):.0%}"])
    rep.table("Denoiser vs ViT per sample (batch 96)", ["precision", "UNet one-shot", "ViT + raw explanation",
                                                         "denoiser share"], rows)
    threads = torch.get_num_threads()
    x3 = torch.rand(3, 3, 32, 32)
    def loop(precision: str, parallel: bool = True) -> None:
        runtime = Runtime(precision=precision, parallel=parallel)
        FaithfulViT.from_pair(pair, 0.25, runtime=runtime).sample(x3, 64)

    rows = []
    for label, n_threads, pooled in (("1 thread", 1, False), (f"{threads} intra-op threads", threads, False),
                                     (f"{threads} workers x 1 thread (default)", threads, True)):
        torch.set_num_threads(n_threads)
        rows.append([label, *(f"{median(timed(lambda: loop(p, pooled), 5)) / 192 * 1e3:.2f} ms"
                              for p in ("float32", "bfloat16"))])
    torch.set_num_threads(threads)
    rep.table("Thread settings (DDS loop, 192 samples, per sample)", ["threads", "float32", "bfloat16"], rows,
              note="Intra-op threads end every operator in a barrier; when another process holds a core, that "
                   "barrier waits for a descheduled thread (see the loaded-machine table in the text).")
    rows, default = [], dict(strategy.CPU_BATCH)
    for cap in (24, 48, 96, 128):
        strategy.CPU_BATCH.update({dtype: cap for dtype in default})
        rows.append([cap, *(f"{median(timed(lambda: loop(p), 5)) / 192 * 1e3:.2f} ms" for p in ("float32", "bfloat16"))])
    strategy.CPU_BATCH.update(default)
    rep.table("Samples per forward pass on the CPU (DDS loop, 192 samples, per sample)",
              ["cap (runtime.strategy.CPU_BATCH)", "float32", "bfloat16"], rows,
              note=f"Batches are equal and even in number: 192 samples at cap 48 are 4 x 48, at 96 2 x 96. "
                   f"Differences under about 10% are run-to-run noise here. Chosen: "
                   f"{', '.join(f'{str(k).split(chr(46))[-1]} {v}' for k, v in default.items())}.")
    image = torch.from_numpy(prepare_image(test_images(1)[0], pair.classifier.img_size).astype(np.float32))[None]
    params = AnalysisConfig().resolved_attack().params
    rows = []
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        seconds = median(timed(lambda: run_attack("pgd", pair.classifier, image, params=params, seed=0), 5))
        rows.append([n_threads, f"{seconds * 1e3:.0f} ms"])
    torch.set_num_threads(threads)
    rep.table("The attack (PGD-10, one image) by intra-op threads", ["threads", "median"], rows,
              note="analyze runs it on one thread (runtime.workers.submit_single_threaded): see the thread-settings section.")


def section_targets(rep: Report) -> None:
    """The issue's targets against this run's numbers (first in the report)."""
    n = rep.numbers
    rows = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        rows.append([target, measured, "-" if ok is None else ("met" if ok else "not met")])

    if "loop_fp32" in n:
        frac = n["loop_fp32"] / n["matmul_fp32"]
        add("DDS loop >= 70% of the float32 matmul rate, in float32",
            f"{frac:.0%} (interleaved {n['loop_fp32_interleaved_fraction']:.0%}); bfloat16 loop "
            f"{n['loop_bf16'] / n['matmul_fp32']:.0%}", frac >= 0.7)
    for key, label in (("default", "default settings"), ("careful", "careful settings")):
        if f"analysis_{key}_64" in n:
            add(f"full analysis, N = 64, <= 0.5 s ({label})", f"{n[f'analysis_{key}_64']:.3f} s",
                n[f"analysis_{key}_64"] <= 0.5)
    for key, label in (("default", "default settings"), ("careful", "careful settings")):
        if f"sweep_{key}" in n:
            add(f"sweep of 6 sigmas, N = 64, <= 2.5 s ({label})", f"{n[f'sweep_{key}']:.2f} s", n[f"sweep_{key}"] <= 2.5)
    if "memory_ratio" in n:
        add("memory does not grow with N", f"peak RSS at the largest N / at the next smaller N (8x fewer samples): "
            f"{n['memory_ratio']:.2f} (RSS after the call: {n['memory_steady_ratio']:.2f})", n["memory_ratio"] < 1.05)
    for key, label in (("default", "default settings"), ("careful", "careful settings")):
        if f"speedup_{key}" in n:
            add(f">= 10x the reference implementation ({label})", f"{n[f'speedup_{key}']:.1f}x", n[f"speedup_{key}"] >= 10)
    if "loop_fp32" in n and "analysis_default_64" in n:
        floor = 192 * n["flops_per_sample"] / (n["matmul_fp32"] * 1e9)
        add("(bound) careful analysis (192 float32 samples) at 100% of the float32 matmul rate, smoothing alone",
            f"{floor:.3f} s + the attack", None)
    rep.table("Targets (issue) against this run", ["target", "measured", "status"], rows,
              note="Default settings: precision='auto' (bfloat16 on this CPU, which has AVX512-BF16) and the "
                   "bootstrap noise floor. Careful settings: float32 and the independent noise floor (a third batch "
                   "of N samples), the defaults before this work. Both choices are measured below.",
              first=True)


# --------------------------------------------------------------------------------------------


def write(out: Path, rep: Report, header: dict[str, str], seconds: float) -> None:
    info = "\n".join(f"- {k}: {v}" for k, v in header.items())
    block = f"{START}\n\n_Generated by `python benchmarks/bench_dds.py --out {out.name}` in {seconds / 60:.1f} min._\n\n" \
            f"{info}\n\n{rep.markdown()}\n\n{END}"
    text = out.read_text() if out.exists() else f"# Performance\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Measured\n\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    out.write_text(before + block + after)
    (out.parent / "performance.json").write_text(json.dumps(rep.numbers, indent=2, default=float) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Markdown file to write the measured section into")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--images", type=int, default=50, help="test images for the bfloat16 accuracy check")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 6 images, small batch runs")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to skip (e.g. batch memory profile)")
    args = parser.parse_args(argv)
    repeats, count = (2, 6) if args.quick else (args.repeats, args.images)
    started = time.perf_counter()
    header = machine()
    header["load average before (1/5/15 min)"] = load_average()
    pair = load_pair("default")
    image = test_images(1)[0]
    rep = Report()
    sections = {
        "rates": lambda: section_rates(rep, pair, repeats),
        "analysis": lambda: section_analysis(rep, pair, image, repeats),
        "sweep": lambda: section_sweep(rep, pair, image, repeats),
        "slider": lambda: section_slider(rep, pair, image, repeats),
        "attack_change": lambda: section_attack_change(rep, pair, image, repeats),
        "k_change": lambda: section_k_change(rep, pair, image, repeats),
        "reference": lambda: section_reference(rep, pair, image, repeats),
        "accuracy": lambda: section_accuracy(rep, pair, count),
        "early_stop": lambda: section_early_stop(rep, pair, max(count // 2, 3)),
        "batch": lambda: section_batch(rep, DATA, 4 if args.quick else 16),
        "memory": lambda: section_memory(rep, (64, 256) if args.quick else (64, 1024, 8192)),
        "stages": lambda: section_stages(rep, pair),
        "profile": lambda: section_profile(rep, pair),
    }
    for name, run in sections.items():
        if name not in args.skip:
            run()
    section_targets(rep)
    header["load average after (1/5/15 min)"] = load_average()
    print("\n" + "\n".join(f"{k}: {v}" for k, v in header.items()))
    if args.out:
        write(args.out, rep, header, time.perf_counter() - started)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
