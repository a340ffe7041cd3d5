"""What every model loader shares: where the shipped models are, the device check, the offline
rule, and the checks of weights (finite values, readable safetensors files)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from fvit_core.errors import ModelLoadError, one_line


ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"


MODELS_DIR = ASSETS_DIR / "models"


def check_finite_weights(module: nn.Module, what: str) -> None:
    """Refuse a model with NaN or infinite parameters or buffers (a corrupted or diverged checkpoint).

    Such a model would turn every result into NaN; saying so at load time names the culprit.
    """
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(
                f"{what} has NaN or infinite values in {name!r}: the checkpoint is corrupted or its training "
                "diverged; re-export or re-download it"
            )


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no hub requests.

    huggingface_hub reads the variable once, at import; it is read again here so that a value set
    before any hub library was imported and one set later are both honoured by our loaders.
    """
    values = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return values in {"1", "ON", "YES", "TRUE"}


# Set when a front found the hub unreachable and turned downloads off (fvit_core.cli.main, the app).
HUB_UNREACHABLE_ENV = "FVIT_HUB_UNREACHABLE"


def offline_reason() -> str:
    """Why hub requests are off, for error messages: no network, or HF_HUB_OFFLINE."""
    host = os.environ.get(HUB_UNREACHABLE_ENV)
    return f"no network: {host} did not answer" if host else "HF_HUB_OFFLINE is set"


def hub_host() -> str:
    """The model hub's host name: HF_ENDPOINT's, by default huggingface.co."""
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the model hub (HF_ENDPOINT's host, port 443) opens within
    ``timeout_s``. Behind a proxy (HTTPS_PROXY / ALL_PROXY set) the answer is not ours to
    judge: True, and huggingface_hub goes through the proxy as usual."""
    import socket

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    if hub_offline():
        return True  # offline already: nothing to probe
    try:
        socket.create_connection((hub_host(), 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def check_device(device: str | torch.device) -> torch.device:
    """Parse a device name and check that this machine has it; ModelLoadError otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available on this machine; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r} asked for, but MPS is not available on this machine; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return parsed


def check_safetensors(path: Path) -> None:
    """Fail with a clear message if ``path`` is not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a valid safetensors file (truncated or corrupted?): {one_line(exc, 400)}") from exc
    if not keys:
        raise ModelLoadError(f"{path} holds no tensors")
