"""The typed errors (fvit_core/errors.py) and how the CLI maps them to exit statuses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fvit_core import errors
from fvit_core.cli.main import main
from fvit_core.data.images import ImageError
from fvit_core.data.pixels import check_pixels
from fvit_core.errors import FViTError, InputError, ModelLoadError, SettingError, is_user_error, one_line
from fvit_core import models


def test_hierarchy_is_typed_and_keeps_value_error():
    for cls in (InputError, SettingError, ModelLoadError):
        assert issubclass(cls, FViTError) and issubclass(cls, ValueError)
    assert issubclass(ImageError, InputError)
    assert models.ModelLoadError is ModelLoadError  # also importable with the model loaders
    assert not issubclass(FViTError, ValueError)
    assert not issubclass(InputError, SettingError) and not issubclass(SettingError, InputError)


def test_user_errors_are_told_from_bugs():
    assert is_user_error(SettingError("x")) and is_user_error(InputError("x")) and is_user_error(ModelLoadError("x"))
    assert is_user_error(FileNotFoundError("x")) and is_user_error(MemoryError())
    assert not is_user_error(ValueError("x")) and not is_user_error(KeyError("x")) and not is_user_error(RuntimeError("x"))


def test_torch_out_of_memory_is_a_user_error():
    import torch

    assert errors.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_user_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))


def test_errors_module_does_not_import_torch():
    code = "import sys, fvit_core.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_one_line_squeezes_and_cuts():
    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line(KeyError()) == "KeyError"
    text = one_line(ValueError("x" * 2000), 50)
    assert len(text) == 50 and text.endswith("...")


@pytest.mark.parametrize("bad, batched, message", [
    (np.zeros((32, 32, 3), np.float32), False, r"must be an array of shape \(3, H, W\), got shape \(32, 32, 3\)"),
    (np.zeros((3, 8, 8), np.float32), True, r"must be a batch of shape \(B, 3, H, W\) with B >= 1"),
    (np.zeros((3, 8, 8), np.uint8), False, "float pixels in \\[0, 1\\], got dtype uint8"),
    (np.full((3, 8, 8), np.nan, np.float32), False, "NaN or inf"),
    (np.full((3, 8, 8), 1.5, np.float32), False, r"in \[0, 1\] \(got min 1.5, max 1.5\)"),
    ([0.5], False, "numpy array or torch.Tensor"),
])
def test_check_pixels_refuses_with_input_error(bad, batched, message):
    with pytest.raises(InputError, match=message):
        check_pixels(bad, batched=batched)


def test_check_pixels_accepts_pixels_and_tolerance():
    import torch

    check_pixels(np.zeros((3, 4, 4), np.float32), batched=False)
    check_pixels(torch.ones(2, 3, 4, 4), batched=True)
    check_pixels(torch.full((1, 3, 4, 4), 1.0 + 1e-6), batched=True, tolerance=1e-5)
    with pytest.raises(InputError):
        check_pixels(torch.full((1, 3, 4, 4), 1.0 + 1e-4), batched=True, tolerance=1e-5)


def _png(tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
    return path


def test_cli_bad_setting_exits_2(tmp_path, capfd):
    assert main(["analyze", str(_png(tmp_path)), "--k", "0"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fvit analyze: error: k must be"), err


def test_cli_bad_image_exits_2(tmp_path, capfd):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all")
    assert main(["analyze", str(path)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fvit analyze: error: ") and "please report" not in err, err


@pytest.mark.parametrize("exc", [ValueError("an engine bug"), KeyError("an engine bug"), RuntimeError("an engine bug")])
def test_cli_bug_exits_1_and_asks_for_a_report(tmp_path, capfd, monkeypatch, exc):
    import fvit_core.data.images as images

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.delenv("FVIT_DEBUG", raising=False)
    monkeypatch.setattr(images, "load_image", broken)
    assert main(["analyze", str(_png(tmp_path))]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "internal error (please report it" in err and "an engine bug" in err, err
    assert f"{type(exc).__name__}:" in err


def test_cli_out_of_memory_exits_2_with_a_hint(tmp_path, capfd, monkeypatch):
    import torch

    import fvit_core.data.images as images

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(images, "load_image", oom)
    assert main(["analyze", str(_png(tmp_path))]) == 2
    err = capfd.readouterr().err
    assert err.startswith("fvit analyze: error: out of memory (try a smaller --batch-size") and "please report" not in err


def test_the_notebook_api_raises_typed_errors_on_user_input():
    """Wrong arrays are InputError, wrong orders and grids SettingError: a notebook user (and the
    CLI's exit status) can tell their mistake from a bug."""
    import numpy as np

    from fvit_core import metrics
    from fvit_core.errors import InputError, SettingError
    from fvit_core.method import certify

    p = np.full(4, 0.25)
    with pytest.raises(InputError, match="same shape"):
        metrics.topk_overlap(np.ones(4), np.ones(5), 2)
    with pytest.raises(InputError, match="NaN"):
        metrics.topk_overlap(np.array([1.0, np.nan, 0.0, 0.0]), np.ones(4), 2)
    with pytest.raises(InputError, match="softmax"):
        metrics.divergences(np.array([2.0, -1.0, 0.0, 0.0]), p)
    with pytest.raises(SettingError, match="renyi_alpha"):
        metrics.divergences(p, p, renyi_alpha=-1.0)
    with pytest.raises(SettingError, match="grid"):
        metrics.map_metrics(p, p, (3, 3), 2)
    with pytest.raises(InputError, match="vote counts"):
        certify.certify_counts(np.array([1.5, 2.0]), np.array([3, 4]), 0.25, 0.001)
