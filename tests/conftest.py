"""Shared fixtures: tiny random models that keep the suite fast on 2 CPU cores."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch

from fvit_core.models import CIFAR10_MEAN, CIFAR10_STD, PixelViT, create_vit

# --------------------------------------------------------------------------------------------
# The whole suite runs with outbound network blocked: any connection to a non-loopback address
# raises and is recorded, and the session fails if one was attempted (tests that provoke one on
# purpose clear the record). Hub libraries are told they are offline too.
# --------------------------------------------------------------------------------------------
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
NETWORK_ATTEMPTS: list[str] = []
_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guard(real):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
            NETWORK_ATTEMPTS.append(repr(address))
            raise OSError(f"network access blocked in tests: {address!r}")
        return real(self, address)

    return connect


socket.socket.connect = _guard(_real_connect)
socket.socket.connect_ex = _guard(_real_connect_ex)


def pytest_sessionfinish(session, exitstatus):
    if NETWORK_ATTEMPTS:
        print(f"\nFAILED: the test suite attempted network access: {NETWORK_ATTEMPTS}")
        session.exitstatus = 1


# Tiny models gain nothing from intra-op parallelism, and OpenMP workers spin-waiting for a core
# made a 2 ms forward pass take 200 ms whenever another process kept both CPUs busy.
torch.set_num_threads(1)

TINY_VIT_ARGS: dict = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def make_tiny_vit(seed: int = 0) -> PixelViT:
    """A seeded PixelViT: 32x32 input, 8x8 patches (P = 16), 2 blocks, 2 heads, 10 classes.

    Position embeddings and query/key/value weights are re-drawn with larger std than timm's
    init (0.02), so random attention is far from uniform and the explanation methods disagree
    measurably.
    """
    torch.manual_seed(seed)
    vit = create_vit("vit_tiny_patch16_224", num_classes=10, model_args=TINY_VIT_ARGS)
    with torch.no_grad():
        vit.pos_embed.normal_(0.0, 0.5)
        vit.cls_token.normal_(0.0, 0.5)
        for block in vit.blocks:
            block.attn.qkv.weight.normal_(0.0, 0.2)
    return PixelViT(vit, mean=CIFAR10_MEAN, std=CIFAR10_STD)


@pytest.fixture
def tiny_vit() -> PixelViT:
    return make_tiny_vit(0)


@pytest.fixture(scope="session")
def tiny_pair_dir(tmp_path_factory):
    """Folder with classifier/ and denoiser/ of a tiny pair, saved through the real savers."""
    from tiny_pair import save_tiny_pair

    folder = tmp_path_factory.mktemp("tiny_pair")
    save_tiny_pair(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pair(tiny_pair_dir):
    """The tiny pair loaded back through load_pair (timm local-dir + diffusers from_pretrained)."""
    from tiny_pair import load_tiny_pair

    return load_tiny_pair(tiny_pair_dir)
