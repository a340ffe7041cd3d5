"""Runtime strategy: the precision the networks run in, and read-only reduced-precision copies.

bfloat16 is a speed strategy, not part of the method: its effect on labels and top-k sets was
measured against float32 (docs/PERFORMANCE.md) and is far inside the Monte Carlo error. Noise,
the x0 formula, the softmax row of the explanation and every sum stay float32/float64.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import weakref

import torch
from torch import nn

from fvit_core.errors import SettingError
from fvit_core.models import Denoiser, PixelViT

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


def resolve_precision(precision: str, device: torch.device | str, *, float32_only: bool = False) -> str:
    """The precision the networks run in: ``precision`` itself, or for "auto" bfloat16 where the
    device computes it natively (native_bfloat16) and the work is not ``float32_only``, float32
    elsewhere. Explanations that differentiate the logits or propagate LRP relevance are
    float32-only (explanations.settings.float32_only: gradients in bfloat16 were not measured,
    and the LRP rules divide by activations).

    bfloat16 is the fast default because its effect was measured and is far inside the Monte
    Carlo error (docs/PERFORMANCE.md: same smoothed label on 50 of 50 test images, top-8 overlap
    with float32 0.988 against a float32-vs-float32 noise floor of 0.920).
    """
    if precision == "auto":
        return "bfloat16" if native_bfloat16(torch.device(device)) and not float32_only else "float32"
    if precision not in PRECISIONS:
        raise SettingError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    return precision


_COPIES: "weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, tuple[tuple, nn.Module]]]" = (
    weakref.WeakKeyDictionary()
)
_COPIES_LOCK = threading.Lock()


def weights_fingerprint(*modules: nn.Module) -> tuple:
    """Changes whenever a weight of ``modules`` is replaced or modified in place (training,
    load_state_dict): the key under which copies and cached results stay valid."""
    return tuple((t.data_ptr(), t._version) for m in modules for t in (*m.parameters(), *m.buffers()))


def model_in_precision(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` itself for float32, else a copy in ``dtype`` made once (and again after the
    original's weights change). The original is never modified, so a model shared by several
    threads stays float32 for everyone else; the copy is read-only too."""
    if dtype == torch.float32:
        return module
    fingerprint = weights_fingerprint(module)
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


def models_in_precision(classifier: PixelViT, denoiser: Denoiser | None, precision: str
                        ) -> tuple[PixelViT, Denoiser | None]:
    """The classifier and the denoiser's UNet in ``precision`` (a resolved name of PRECISIONS)."""
    dtype = PRECISIONS[precision]
    clf = model_in_precision(classifier, dtype)
    if denoiser is not None and dtype != torch.float32:
        denoiser = dataclasses.replace(denoiser, unet=model_in_precision(denoiser.unet, dtype))
    return clf, denoiser
