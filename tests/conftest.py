"""Shared fixtures: tiny random models that keep the suite fast on 2 CPU cores."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# The tests write nothing into the checkout: hypothesis keeps no example database, and its other
# files (the constants cache) go to a temporary folder instead of ./.hypothesis/.
from hypothesis import settings as _hypothesis_settings  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="fvit-test-hypothesis-"))
_hypothesis_settings.register_profile("fvit", database=None)
_hypothesis_settings.load_profile("fvit")

# The dashboard's package (app/) is imported from the repository root, as `streamlit run` does.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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

# Python subprocesses (CLI tests, torchrun, the browser test's server) get the same guard from a
# generated sitecustomize on PYTHONPATH; they append their attempts to a file read at the end.
_SUBPROCESS_GUARD = """
import ipaddress as _ip, os as _os, socket as _socket


def _fvit_is_local(address):
    if isinstance(address, (str, bytes)) or address[0] in ("localhost", ""):
        return True
    try:
        return _ip.ip_address(address[0]).is_loopback
    except ValueError:
        return False


def _fvit_guard(real):
    def connect(self, address):
        if self.family in (_socket.AF_INET, _socket.AF_INET6) and not _fvit_is_local(address):
            with open(_os.environ["FVIT_TEST_NETWORK_LOG"], "a") as log:
                log.write(repr(address) + "\\n")
            raise OSError(f"network access blocked in tests: {address!r}")
        return real(self, address)
    return connect


if _os.environ.get("FVIT_TEST_NETWORK_LOG"):
    _socket.socket.connect = _fvit_guard(_socket.socket.connect)
    _socket.socket.connect_ex = _fvit_guard(_socket.socket.connect_ex)
"""
_GUARD_DIR = Path(tempfile.mkdtemp(prefix="fvit-test-netguard-"))
(_GUARD_DIR / "sitecustomize.py").write_text(_SUBPROCESS_GUARD)
os.environ["FVIT_TEST_NETWORK_LOG"] = str(_GUARD_DIR / "attempts.log")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_GUARD_DIR), os.environ.get("PYTHONPATH")) if p)


def subprocess_network_attempts() -> list[str]:
    """Connections that Python subprocesses of the suite tried (and were refused)."""
    log = Path(os.environ["FVIT_TEST_NETWORK_LOG"])
    return log.read_text().splitlines() if log.is_file() else []


def clear_subprocess_network_attempts() -> None:
    Path(os.environ["FVIT_TEST_NETWORK_LOG"]).unlink(missing_ok=True)


def _checkout_files() -> set[str]:
    """Every file of the checkout but git's own and Python's byte-code caches."""
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__") and not d.endswith(".egg-info")]
        found.update(os.path.relpath(os.path.join(folder, name), ROOT) for name in files)
    return found


_FILES_BEFORE: set[str] = set()


def pytest_sessionstart(session):
    _FILES_BEFORE.update(_checkout_files())


def pytest_sessionfinish(session, exitstatus):
    written = sorted(_checkout_files() - _FILES_BEFORE)
    if written:
        print(f"\nFAILED: the test suite wrote into the checkout: {written[:10]}")
        session.exitstatus = 1
    if NETWORK_ATTEMPTS:
        print(f"\nFAILED: the test suite attempted network access: {NETWORK_ATTEMPTS}")
        session.exitstatus = 1
    if subprocess_network_attempts():
        print(f"\nFAILED: a subprocess of the test suite attempted network access: {subprocess_network_attempts()}")
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


# --------------------------------------------------------------------------------------------
# Batch evaluation (fvit eval / certify): a small labelled image folder and a reference run.
# --------------------------------------------------------------------------------------------

# The grid the eval tests share: 6 images x 2 budgets x (vanilla + DDS + RS) x 2 methods = 72 rows.
EVAL_TEST_ARGS: tuple[str, ...] = (
    "--eps", "2/255,8/255", "--mode", "vanilla,dds,rs", "--sigma", "0.25", "--method", "raw,rollout",
    "--n-samples", "8", "--pt-samples", "2", "--k", "4", "--steps", "5", "--no-progress",
)
EVAL_TEST_ROWS = 72


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """root/a/{0,1,2}.png and root/b/{0,1,2}.png: random 32x32 RGB images (labels 0 and 1)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def eval_command(image_folder, tiny_pair_dir, out) -> list[str]:
    """`fvit eval` arguments (after the program name) for the shared test grid."""
    return ["eval", "--data", str(image_folder), "--out", str(out), "--classifier", str(tiny_pair_dir / "classifier"),
            "--denoiser", str(tiny_pair_dir / "denoiser"), *EVAL_TEST_ARGS]


def read_rows(out) -> list[dict]:
    """The merged rows of an eval output folder without the timing field."""
    import json

    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


@pytest.fixture(scope="session")
def eval_reference(image_folder, tiny_pair_dir, tmp_path_factory):
    """The shared grid evaluated by one uninterrupted in-process run: (output folder, rows)."""
    from fvit_core.cli.main import main

    out = tmp_path_factory.mktemp("eval_reference")
    assert main(eval_command(image_folder, tiny_pair_dir, out)) == 0
    return out, read_rows(out)


@pytest.fixture
def two_threads():
    """torch's intra-op thread count set to 2 for one test (the worker pool then has two workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def killed_after_rows(command: list[str], rows: int) -> None:
    """Run in a forked child: the command, SIGKILLed right after its ``rows``-th row reaches the file."""
    import os
    import signal

    from fvit_core.batch import store
    from fvit_core.cli.main import main

    real, written = store.AppendLog.append, [0]

    def append(self, line: str) -> None:
        real(self, line)
        written[0] += 1
        if written[0] == rows:
            os.kill(os.getpid(), signal.SIGKILL)

    store.AppendLog.append = append
    os._exit(main(command))
