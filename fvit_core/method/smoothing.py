"""The smoothing sample loop: Denoised Diffusion Smoothing (DDS) and its ablations.

docs/METHOD.md, section 3. For each image x and i = 1..N: draw delta_i ~ N(0, sigma^2 I) in pixel
space (on the CPU, from the caller's generator, so results are identical on every device), form
the model input for the chosen mode, run the ViT, and accumulate

    FViT attention       w~(x) = mean_i w_i            (P,)
    smoothed prediction  y~(x) = mean_i softmax_i      (C,)
    vote counts          c[j]  = #{i : argmax p_i = j} (C,)

as running sums (memory does not grow with N unless per-sample maps are asked for).

Modes:
- ``dds``: one-shot denoise of x + delta at t* = timestep_for_sigma(sigma) (the FViT);
- ``rs``: randomized smoothing without a denoiser, the ViT sees x + delta clipped to [0, 1]
  (clipping is post-processing of the Gaussian mechanism, so the guarantees still hold);
- ``denoise-only``: no noise, x_t = sqrt(abar) (2x - 1), one deterministic denoising pass;
- ``multistep``: DDPM ancestral denoising from t* to 0 (slower; Carlini et al. found one-shot
  as good or better).

Cost (docs/PERFORMANCE.md). Samples of all images share forward batches; ``precision="bfloat16"``
runs both networks in bfloat16 (copies made once per model; noise, the x0 formula, the softmax
row of the explanation and all sums stay float32/float64); ``early_stop`` ends the loop once
every image's label and top-k set are statistically settled (:class:`EarlyStop`).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from torch import nn

from fvit_core.data.pixels import check_pixels
from fvit_core.errors import SettingError
from fvit_core.explanations.attention import EXPLANATION_METHODS, HEAD_FUSIONS, explain, needs_gradients
from fvit_core.explanations.lrp import LRP_METHODS
from fvit_core.method.denoise import multistep_denoise, one_shot_denoise, timestep_for_sigma
from fvit_core.models.loading import Denoiser, ModelPair, PixelViT

T = TypeVar("T")

SMOOTHING_MODES: tuple[str, ...] = ("dds", "rs", "denoise-only", "multistep")
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# What a user may ask for: a precision, or "auto" (resolve_precision).
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    # Private probes of torch.cpu (present since 2.3); absent ones count as "no".
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(precision: str, device: torch.device | str, method: str = "raw") -> str:
    """The precision the networks run in: ``precision`` itself, or for "auto" bfloat16 where the
    device computes it natively (native_bfloat16) and the explanation ``method`` needs no
    gradients, float32 elsewhere (gradients in bfloat16 were not measured, so "auto" does not
    choose them; nor for the LRP methods, whose rules divide by activations).

    bfloat16 is the fast default because its effect was measured and is far inside the Monte
    Carlo error (docs/PERFORMANCE.md: same smoothed label on 50 of 50 test images, top-8 overlap
    with float32 0.988 against a float32-vs-float32 noise floor of 0.920).
    """
    if precision == "auto":
        needs_grad = method in EXPLANATION_METHODS and needs_gradients(method)
        # The LRP rules divide by activations; their effect in bfloat16 was not measured either.
        float32_only = needs_grad or method in LRP_METHODS
        return "bfloat16" if native_bfloat16(torch.device(device)) and not float32_only else "float32"
    if precision not in PRECISIONS:
        raise SettingError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    return precision


@dataclass
class SmoothedOutput:
    """Monte Carlo estimates for one image (numpy; probabilities and attention sum to 1).

    Attributes:
        attention: (P,) mean explanation w~(x).
        attention_se: (P,) per-coordinate standard error of that mean.
        probs: (C,) smoothed prediction distribution y~(x); probs_se its standard error.
        votes: (C,) int64 hard-vote counts.
        n_samples: N actually drawn (1 for denoise-only; fewer than asked when stopped early).
        t_star: denoising timestep (None for rs).
        denoised_sample: (3, H, W) the first model input, for display.
        samples_attention: (N, P) per-sample maps, only when asked for (bootstrap), else None.
        stopped_early: True when :class:`EarlyStop` ended the loop before ``n_samples``.
    """

    attention: np.ndarray
    attention_se: np.ndarray
    probs: np.ndarray
    probs_se: np.ndarray
    votes: np.ndarray
    n_samples: int
    t_star: int | None
    denoised_sample: np.ndarray
    samples_attention: np.ndarray | None = None
    stopped_early: bool = False

    @property
    def label(self) -> int:
        """Predicted class of the smoothed distribution y~ (soft smoothed classifier)."""
        return int(np.argmax(self.probs))


@dataclass(frozen=True)
class EarlyStop:
    """Stop the sample loop once the label and the top-k set of every image are settled.

    After every ``check_every`` samples per image, from ``min_samples`` on, the loop stops when
    for every image of the batch, with means m and standard errors se after n samples,

    - label:  m_p[c1] - m_p[c2] > z * (se_p[c1] + se_p[c2])   (c1, c2 the top two classes of y~)
    - top-k:  m_w[i] - m_w[j]   > z * (se_w[i] + se_w[j])     for every i in T_k, j outside it

    with z = Phi^-1(1 - alpha / looks) and looks the number of checks ``n_samples`` allows.
    se_i + se_j bounds the standard error of a difference whatever the correlation. "The label
    and T_k equal those of the N -> infinity limit" is an intersection of pairwise orderings, so
    each pair is tested at the full level (intersection-union test, Berger 1982) and Bonferroni
    over the looks keeps the chance of stopping with a wrong label or set below ``alpha``
    (normal approximation of each mean). Every image of a batch stops at the same N, so
    estimates compared with each other (clean, attacked, the noise floor's second clean
    estimate) always have equal sample counts.
    """

    k: int
    alpha: float = 0.05
    check_every: int = 16
    min_samples: int = 32

    def __post_init__(self) -> None:
        for name in ("k", "check_every", "min_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(f"early stop {name} must be a whole number >= 1, got {value!r}")
        if not 0.0 < float(self.alpha) < 1.0:
            raise SettingError(f"early stop alpha must be in (0, 1), got {self.alpha!r}")

    def checkpoints(self, n_samples: int) -> list[int]:
        """The sample counts after which the rule is checked (none at the budget itself)."""
        return [n for n in range(self.check_every, n_samples, self.check_every) if n >= self.min_samples]

    def z(self, n_samples: int) -> float:
        """The per-comparison normal quantile, Bonferroni-corrected over the looks."""
        looks = max(len(self.checkpoints(n_samples)), 1)
        return NormalDist().inv_cdf(1.0 - float(self.alpha) / looks)


def settled(attention: np.ndarray, attention_se: np.ndarray, probs: np.ndarray, probs_se: np.ndarray,
            k: int, z: float) -> bool:
    """The :class:`EarlyStop` rule for one image: (P,) attention and (C,) probability means and SEs."""
    order_p = np.argsort(-probs, kind="stable")
    if len(order_p) > 1:
        c1, c2 = order_p[0], order_p[1]
        if not probs[c1] - probs[c2] > z * (probs_se[c1] + probs_se[c2]):
            return False
    if k >= len(attention):
        return True
    order_w = np.argsort(-attention, kind="stable")  # ties by lower index, as metrics.topk_indices
    inside, outside = order_w[:k], order_w[k:]
    gaps = attention[inside][:, None] - attention[outside][None, :]
    bounds = z * (attention_se[inside][:, None] + attention_se[outside][None, :])
    return bool((gaps > bounds).all())


class _Accumulator:
    """Streaming sums for the mean and standard error of per-sample vectors (float64 numpy: the
    calling thread adds while the workers compute, so it stays off torch's thread pool)."""

    def __init__(self, n_images: int, dim_w: int, dim_p: int, keep: bool):
        self.sw = np.zeros((n_images, dim_w))
        self.sw2 = np.zeros_like(self.sw)
        self.sp = np.zeros((n_images, dim_p))
        self.sp2 = np.zeros_like(self.sp)
        self.votes = np.zeros((n_images, dim_p), dtype=np.int64)
        self.kept: list[tuple[np.ndarray, np.ndarray]] | None = [] if keep else None
        self.first: list[np.ndarray | None] = [None] * n_images

    def add(self, image_idx: np.ndarray, w: np.ndarray, p: np.ndarray, firsts: dict[int, np.ndarray]) -> None:
        """Rows of one batch, in sample order: (b,) image index, (b, P) maps, (b, C) probabilities."""
        np.add.at(self.sw, image_idx, w)
        np.add.at(self.sw2, image_idx, w * w)
        np.add.at(self.sp, image_idx, p)
        np.add.at(self.sp2, image_idx, p * p)
        np.add.at(self.votes, (image_idx, p.argmax(-1)), 1)
        for image, pixels in firsts.items():
            self.first[image] = pixels
        if self.kept is not None:
            self.kept.append((image_idx, w.astype(np.float32)))

    def mean_se(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(attention mean, its SE, probs mean, its SE), each (B, dim), after n samples per image."""
        def one(s: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mean = s / n
            var = np.maximum(s2 / n - mean * mean, 0.0) * (n / max(n - 1, 1))
            return mean, np.sqrt(var / n)

        return (*one(self.sw, self.sw2), *one(self.sp, self.sp2))

    def settled(self, n: int, rule: EarlyStop, z: float) -> bool:
        w, w_se, p, p_se = self.mean_se(n)
        return all(settled(w[i], w_se[i], p[i], p_se[i], rule.k, z) for i in range(len(w)))

    def finish(self, n: int, t_star: int | None, stopped_early: bool) -> list[SmoothedOutput]:
        w_all, w_se, p_all, p_se = self.mean_se(n)
        samples = None
        if self.kept is not None:
            idx = np.concatenate([i for i, _ in self.kept])
            ws = np.concatenate([w for _, w in self.kept])
            samples = [ws[idx == i] for i in range(len(w_all))]  # batches come in sample order
        outs = []
        for i in range(len(w_all)):
            w, p = w_all[i], p_all[i]
            outs.append(SmoothedOutput(
                attention=w / w.sum(), attention_se=w_se[i], probs=p / p.sum(),
                probs_se=p_se[i], votes=self.votes[i].copy(), n_samples=n, t_star=t_star,
                denoised_sample=self.first[i], samples_attention=None if samples is None else samples[i],
                stopped_early=stopped_early,
            ))
        return outs


def _check(pair: ModelPair, mode: str, sigma: float, n_samples: int, method: str, head_fusion: str, batch_size: int,
           precision: str = "float32") -> None:
    if mode not in SMOOTHING_MODES:
        raise SettingError(f"unknown smoothing mode {mode!r}; choose one of {', '.join(SMOOTHING_MODES)}")
    if mode != "rs" and pair.denoiser is None:
        raise SettingError(f"mode {mode!r} needs a denoiser; load a pair with one or use mode 'rs'")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise SettingError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SettingError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if method not in EXPLANATION_METHODS:
        raise SettingError(f"unknown explanation method {method!r}; choose one of {', '.join(EXPLANATION_METHODS)}")
    if head_fusion not in HEAD_FUSIONS:
        raise SettingError(f"unknown head fusion {head_fusion!r}; choose one of {', '.join(HEAD_FUSIONS)}")
    if mode != "denoise-only" and not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma > 0):
        raise SettingError(f"sigma must be a positive number of pixel units (e.g. 0.25), got {sigma!r}")
    if precision not in PRECISION_CHOICES:
        raise SettingError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")


# --------------------------------------------------------------------------------------------
# Reduced-precision copies of the (shared, read-only) models
# --------------------------------------------------------------------------------------------

_COPIES: "weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, tuple[tuple, nn.Module]]]" = (
    weakref.WeakKeyDictionary()
)
_COPIES_LOCK = threading.Lock()


def _weights_fingerprint(module: nn.Module) -> tuple:
    """Changes whenever a weight is replaced or modified in place (training, load_state_dict)."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def model_in_precision(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` itself for float32, else a copy in ``dtype`` made once (and again after the
    original's weights change). The original is never modified, so a model shared by several
    threads stays float32 for everyone else; the copy is read-only too."""
    if dtype == torch.float32:
        return module
    fingerprint = _weights_fingerprint(module)
    with _COPIES_LOCK:
        per_dtype = _COPIES.setdefault(module, {})
        entry = per_dtype.get(dtype)
        if entry is None or entry[0] != fingerprint:
            # Outside inference mode, or the copy's weights would be inference tensors that the
            # gradient methods cannot save for backward.
            with torch.inference_mode(False):
                clone = copy.deepcopy(module)
                nn.Module.to(clone, dtype)  # nn.Module's own .to: diffusers' override only adds a warning
            entry = (fingerprint, clone.eval())
            per_dtype[dtype] = entry
    return entry[1]


def _models(pair: ModelPair, precision: str) -> tuple[PixelViT, Denoiser | None]:
    dtype = PRECISIONS[precision]
    clf = model_in_precision(pair.classifier, dtype)
    den = pair.denoiser
    if den is not None and dtype != torch.float32:
        den = dataclasses.replace(den, unet=model_in_precision(den.unet, dtype))
    return clf, den


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
#
# Parallelism. On a CPU the forward batches go to ``torch.get_num_threads()`` worker threads
# that each run one batch with one intra-op thread (torch.set_num_threads is per thread with
# OpenMP, so the caller's setting is untouched). Batches are independent, so workers never wait
# for each other inside an operator; with intra-op threads every one of the ~300 operators of a
# forward pass ends in a barrier, and when another process holds a core that barrier stalls
# until the descheduled thread runs again (measured 6x slower on this shared 2-core machine,
# docs/PERFORMANCE.md). Noise is drawn in the calling thread in batch order and results are
# summed in batch order, so the numbers do not depend on the workers.


@dataclass(frozen=True)
class _Job:
    image_idx: torch.Tensor
    sample_idx: torch.Tensor
    normal: torch.Tensor | None  # standard normal draws for this batch (None: shared or no noise)


@dataclass(frozen=True)
class _Step:
    """Everything one forward batch needs besides its job (read-only, shared by the workers)."""

    clf: PixelViT
    den: Denoiser | None
    images: torch.Tensor  # (B, 3, H, W) float32, CPU
    shared: torch.Tensor | None  # (N, 3, H, W) common random numbers, pixel units
    sigma: float
    mode: str
    t_star: int | None
    steps: int
    generator: torch.Generator | None
    method: str
    head_fusion: str
    dtype: torch.dtype
    device: torch.device

    def __call__(self, job: _Job) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """(image index (b,), attention (b, P), probabilities (b, C), {image: its first model input})."""
        with torch.inference_mode():
            x = self.images[job.image_idx]
            if job.normal is not None:
                x = x + job.normal * self.sigma
            elif self.shared is not None:
                x = x + self.shared[job.sample_idx]
            inputs = _model_inputs(self.clf, self.den, x.to(self.device), self.mode, self.t_star, self.steps,
                                   self.generator)
            exp = explain(self.clf, inputs.to(self.dtype), method=self.method, head_fusion=self.head_fusion)
            probs = torch.softmax(exp.logits.float(), dim=-1)
            firsts = {int(job.image_idx[row]): inputs[row].float().cpu().numpy()
                      for row in torch.nonzero(job.sample_idx == 0).flatten().tolist()}
            return (job.image_idx.numpy(), exp.attention.double().cpu().numpy(), probs.double().cpu().numpy(),
                    firsts)


_POOLS: dict[tuple[str, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int, name: str = "fvit-smooth") -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads with one intra-op thread each (shared by
    concurrent callers; created once)."""
    with _POOLS_LOCK:
        pool = _POOLS.get((name, workers))
        if pool is None:
            pool = _POOLS[(name, workers)] = _start_pool(workers, name)
        return pool


def _start_pool(workers: int, name: str) -> ThreadPoolExecutor:
    # torch.set_num_threads(1) in a worker sets that thread's OpenMP/MKL thread count, and also
    # the default that threads initialised later take; the default is restored once every worker
    # has set its own count (the barrier makes the pool start all of its threads now).
    before = torch.get_num_threads()
    ready = threading.Barrier(workers + 1)

    def init() -> None:
        torch.get_num_threads()  # the per-thread lazy init first, or it would later undo the next line
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    started = [pool.submit(init) for _ in range(workers)]
    ready.wait()
    for future in started:
        future.result()
    torch.set_num_threads(before)
    return pool


def submit_single_threaded(fn: Callable[..., T], *args, **kwargs) -> "Future[T]":
    """Start ``fn(*args, **kwargs)`` on a CPU worker thread with one intra-op thread.

    For batch-1 work (an attack on one image): too small to gain from intra-op threads, and
    with them every operator waits at a barrier for a thread that another process may have
    descheduled (docs/PERFORMANCE.md). One worker for the process: such calls run one at a time.
    ``fn`` must not itself wait for this worker.
    """
    return _pool(1, "fvit-serial").submit(fn, *args, **kwargs)


def run_single_threaded(fn: Callable[..., T], *args, **kwargs) -> T:
    """:func:`submit_single_threaded` and wait for the result."""
    return submit_single_threaded(fn, *args, **kwargs).result()


def _workers(device: torch.device, mode: str) -> int:
    # multistep draws from the caller's generator inside the model: it stays in one thread.
    if device.type != "cpu" or mode == "multistep":
        return 1
    return max(torch.get_num_threads(), 1)


def _run(step: _Step, jobs: Iterator[_Job], workers: int) -> Iterator[tuple]:
    """``step(job)`` for every job, in order; at most 2 * workers batches in flight (bounded memory)."""
    if workers == 1:
        yield from map(step, jobs)
        return
    pool, window = _pool(workers), deque()
    for job in jobs:
        window.append(pool.submit(step, job))
        if len(window) >= 2 * workers:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


# On a CPU: at most this many samples per forward pass, by the dtype the networks run in. The
# per-sample cost moved by less than the run-to-run noise (about 10%) between 24 and 128 samples
# (docs/PERFORMANCE.md); the smaller batches keep a worker's activations small (48 float32
# samples are the bytes of 96 bfloat16 ones) and give the workers more batches to share. The
# batches are equal and even in number, so two workers finish together. The cut depends on
# neither the thread count nor the machine, and every CPU forward pass runs on one intra-op
# thread, so the numbers are bit-identical whatever torch.set_num_threads says
# (tests/test_reliability.py checks a fresh process).
CPU_BATCH: dict[torch.dtype, int] = {torch.float32: 48, torch.bfloat16: 96}


def _batches(n_images: int, first: int, count: int, batch_size: int, cpu_batch: int | None
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image index, sample index) of samples first..first+count-1 of every image, image-major,
    cut into equal forward batches of at most ``batch_size`` (batches cut across images); on a
    CPU (``cpu_batch`` given) at most ``cpu_batch`` too, and an even number of them."""
    total = n_images * count
    if cpu_batch is not None:
        cap = min(batch_size, cpu_batch)
        n_batches = min(2 * -(-total // (2 * cap)), total)
    else:
        n_batches = -(-total // batch_size)
    size = -(-total // n_batches)
    for start in range(0, total, size):
        flat = torch.arange(start, min(start + size, total))
        yield flat // count, first + flat % count


def _jobs(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], shape: tuple[int, ...], draw: bool,
          generator: torch.Generator | None) -> Iterator[_Job]:
    """The noise of each batch is drawn here, in the calling thread and in batch order, so the
    numbers are reproducible whichever worker runs the batch."""
    for image_idx, sample_idx in batches:
        normal = torch.randn((len(image_idx), *shape), generator=generator) if draw else None
        yield _Job(image_idx, sample_idx, normal)


def smooth(
    pair: ModelPair,
    images: torch.Tensor,
    *,
    sigma: float,
    n_samples: int,
    mode: str = "dds",
    method: str = "raw",
    head_fusion: str = "mean",
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    keep_samples: bool = False,
    multistep_steps: int = 10,
    progress: Callable[[int, int], None] | None = None,
    precision: str = "float32",
    early_stop: EarlyStop | None = None,
) -> list[SmoothedOutput]:
    """Run the smoothing loop for a batch of images (B, 3, H, W) in [0, 1]; one output per image.

    Samples of all images are interleaved in the same forward batches (clean and attacked images
    share passes). ``noise`` (N, 3, H, W) in pixel units, if given, is used for every image
    (common random numbers); otherwise each image gets independent draws from ``generator``,
    image after image (with ``early_stop``: in rounds of ``check_every`` samples per image).
    ``progress(done, total)`` is called after every batch. ``batch_size`` caps the samples per
    forward pass (on a CPU also :data:`CPU_BATCH`); on a CPU the batches are spread over
    ``torch.get_num_threads()`` single-threaded workers, with the same numbers for any count.

    ``precision="bfloat16"`` runs denoiser and ViT in bfloat16 (docs/PERFORMANCE.md measures the
    effect on labels and top-k sets); ``early_stop`` may end the loop before ``n_samples``
    (:class:`EarlyStop`; every image then has the same, smaller, ``n_samples``). Memory does not
    grow with ``n_samples`` unless ``keep_samples`` (then (N, P) maps per image).
    """
    _check(pair, mode, sigma, n_samples, method, head_fusion, batch_size, precision)
    check_pixels(images, batched=True, what="images")
    if early_stop is not None and not isinstance(early_stop, EarlyStop):
        raise ValueError(f"early_stop must be an EarlyStop rule or None, got {type(early_stop).__name__}")
    precision = resolve_precision(precision, pair.device, method)
    clf, den = _models(pair, precision)
    n = 1 if mode == "denoise-only" else n_samples
    # denoise-only still uses sigma to choose the timestep it denoises from.
    t_star = None if mode == "rs" else timestep_for_sigma(den.alphas_cumprod, sigma)
    if noise is not None and tuple(noise.shape) != (n, *images.shape[1:]):
        raise ValueError(f"shared noise must be ({n}, {', '.join(map(str, images.shape[1:]))}), got {tuple(noise.shape)}")
    shared = None if noise is None else noise.detach().float().cpu()
    step = _Step(clf=clf, den=den, images=images.detach().float().cpu(), shared=shared, sigma=sigma, mode=mode,
                 t_star=t_star, steps=multistep_steps, generator=generator, method=method, head_fusion=head_fusion,
                 dtype=PRECISIONS[precision], device=pair.device)
    draw = mode != "denoise-only" and shared is None
    cpu_batch = CPU_BATCH[PRECISIONS[precision]] if pair.device.type == "cpu" else None
    workers = _workers(pair.device, mode)
    b_images = images.shape[0]
    acc = _Accumulator(b_images, clf.num_patches, clf.num_classes, keep_samples)
    checkpoints = set(early_stop.checkpoints(n)) if early_stop is not None and mode != "denoise-only" else set()
    z = early_stop.z(n) if checkpoints else 0.0
    total, done, drawn, stopped = b_images * n, 0, 0, False
    for upto in sorted(checkpoints | {n}):
        batches = _batches(b_images, drawn, upto - drawn, batch_size, cpu_batch)
        for image_idx, attention, probs, firsts in _run(step, _jobs(batches, images.shape[1:], draw, generator),
                                                         workers):
            acc.add(image_idx, attention, probs, firsts)
            done += len(image_idx)
            if progress is not None:
                progress(done, total)
        drawn = upto
        if upto in checkpoints and acc.settled(drawn, early_stop, z):
            stopped = True
            if progress is not None:
                progress(total, total)
            break
    return acc.finish(drawn, t_star, stopped)


def _model_inputs(clf: PixelViT, den: Denoiser | None, noisy: torch.Tensor, mode: str, t_star: int | None,
                  steps: int, generator: torch.Generator | None) -> torch.Tensor:
    """Float32 pixels for the ViT, still in the smoothing space (the ViT resizes them as its first
    layer, pixel_space): denoised (dds, denoise-only, multistep) or clipped (rs)."""
    if mode == "rs":
        return noisy.clamp(0.0, 1.0)
    if mode == "multistep":
        step_gen = None
        if generator is not None and noisy.device.type == "cpu":
            step_gen = generator
        return multistep_denoise(den, noisy, t_star, n_steps=steps, generator=step_gen)
    return one_shot_denoise(den, noisy, t_star)


def vanilla(pair: ModelPair, images: torch.Tensor, *, method: str = "raw", head_fusion: str = "mean"
            ) -> tuple[np.ndarray, np.ndarray]:
    """The vanilla ViT on a batch: (attention (B, P), probabilities (B, C)) as numpy."""
    exp = explain(pair.classifier, images.to(pair.device), method=method, head_fusion=head_fusion)
    return exp.attention.double().cpu().numpy(), torch.softmax(exp.logits.float(), -1).double().cpu().numpy()
