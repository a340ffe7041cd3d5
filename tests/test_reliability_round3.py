"""Reliability round three (issue 26): huge numbers, outputs onto special files and links, file
names that are not UTF-8, a checkpoint that lacks a tensor, downloads without a network. Each
case ends in one line that says what to change, with exit status 2 in the CLI."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from fvit_core.cli.analyze import MAX_NUMBER_TEXT, param_value, parse_number
from fvit_core.cli.main import main
from fvit_core.data.files import atomic_write_text, check_replaceable, check_writable_file
from fvit_core.errors import InputError, ModelLoadError, SettingError

HUGE = "1" + "0" * 5000


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("text", [f"{HUGE}/3", HUGE, f"3/{HUGE}", "1" * (MAX_NUMBER_TEXT + 1)])
def test_a_number_too_long_is_refused_before_it_is_converted(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"characters long; a number here has at most {MAX_NUMBER_TEXT}"):
        parse_number(text)


def test_numbers_that_overflow_a_float_are_not_numbers():
    with pytest.raises(argparse.ArgumentTypeError, match="not a number: '1e999/3'"):
        parse_number("1e999/3")  # Fraction -> float overflow was a traceback
    assert parse_number("8/255") == pytest.approx(8 / 255) and parse_number(" 0.25 ") == 0.25


def test_attack_param_values_too_long_are_refused_and_text_stays_text():
    with pytest.raises(SettingError, match="--attack-param value .* characters long"):
        param_value(f"{HUGE}/3")
    with pytest.raises(SettingError, match="characters long"):
        param_value(HUGE)
    assert param_value("8/255") == pytest.approx(8 / 255) and param_value("12") == 12 and param_value("true") is True
    assert param_value("ce") == "ce"


@pytest.mark.parametrize("args", [["--eps", f"{HUGE}/3"], ["--sigma", HUGE], ["--sensitivity-radius", f"{HUGE}/7"],
                                  ["--attack-param", f"alpha={HUGE}/3"]])
def test_huge_numbers_on_the_command_line_are_one_line(args, capsys, tmp_path):
    argv = ["analyze", "x.png", *args, "--json", str(tmp_path / "r.json")]
    if args[0] == "--attack-param":  # read after parsing, by the settings: main's one-line error
        assert main(argv) == 2
    else:  # an argparse type: argparse's exit, one line through OneLineParser
        assert _argparse_exit(argv) == 2
    line = _one_error_line(capsys)
    assert "characters long" in line and "Traceback" not in line


def _argparse_exit(argv) -> int:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code


@pytest.mark.parametrize("command", [["eval", "--data", "d", "--out", "o", "--eps"], ["certify", "--data", "d",
                                                                                     "--out", "o", "--radii"]])
def test_huge_numbers_in_batch_lists_are_one_line(command, capsys):
    assert _argparse_exit([*command, f"0.1,{HUGE}/3"]) == 2
    assert "characters long" in _one_error_line(capsys)


def test_a_settings_file_with_a_5000_digit_seed_is_one_line(tmp_path, capsys):
    settings = tmp_path / "s.json"
    settings.write_text('{"seed": ' + "1" * 5000 + "}")
    assert main(["analyze", "x.png", "--config", str(settings)]) == 2
    assert "a number in it has more than 4,300 digits" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------- outputs


def test_special_files_and_links_are_never_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = tmp_path / "real.json"
    target.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(InputError, match="named pipe"):
        check_writable_file(fifo, "--json")
    with pytest.raises(InputError, match="symbolic link; writing would replace the link itself"):
        check_writable_file(link, "--json")
    with pytest.raises(InputError, match="character device"):
        check_writable_file("/dev/null", "--json")
    # Every writer goes through atomic_write, which checks again just before it renames.
    with pytest.raises(InputError, match="symbolic link"):
        atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "keep" and fifo.exists() and not fifo.is_file()
    check_replaceable(tmp_path / "new.json", "--json")  # a new name is fine
    atomic_write_text(target, "replaced")  # and so is a regular file
    assert target.read_text() == "replaced"


def test_analyze_refuses_a_fifo_before_loading_anything(tmp_path, capsys):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    assert main(["analyze", "x.png", "--json", str(fifo)]) == 2
    assert "is a named pipe (FIFO); fvit writes regular files only" in _one_error_line(capsys)


def test_a_folder_link_as_out_is_fine(tmp_path):
    from fvit_core.data.files import check_writable_folder

    (tmp_path / "real").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "real", target_is_directory=True)
    assert check_writable_folder(tmp_path / "runs", "--out") == tmp_path / "runs"


# ---------------------------------------------------------------------------------- names


def test_an_unreadable_image_with_a_non_utf8_name_is_listed_and_the_run_finishes(tiny_pair_dir, tmp_path):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "a" / "ok.png")
    with open(os.path.join(os.fsencode(data / "a"), b"bad\xff.png"), "wb") as handle:
        handle.write(b"not an image")
    command = ["eval", "--data", str(data), "--out", str(tmp_path / "out"), "--classifier",
               str(tiny_pair_dir / "classifier"), "--denoiser", str(tiny_pair_dir / "denoiser"), "--mode", "vanilla",
               "--steps", "1", "--k", "4", "--no-perturbation-test", "--no-figures", "--no-progress"]
    for _ in range(2):  # the rerun (which tries the skipped image again) finishes too
        assert main(command) == 0
        summary = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
        assert "bad\\udcff.png" in summary
        info = json.loads((tmp_path / "out" / "run_info.json").read_text())
        assert info["images_skipped"] == 1


# ---------------------------------------------------------------------------------- models


def test_a_classifier_missing_a_tensor_is_refused_even_when_timm_would_load_it(tiny_pair_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from fvit_core.models import load_classifier

    folder = tmp_path / "clf"
    shutil.copytree(tiny_pair_dir / "classifier", folder)
    tensors = load_file(folder / "model.safetensors")
    dropped = sorted(name for name in tensors if name.endswith("qkv.weight"))[0]
    del tensors[dropped]
    save_file(tensors, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("model_args", {})["pretrained_strict"] = False  # timm then loads what is there
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=f"lacks 1 tensor\\(s\\) .*{dropped}.*random initialisation"):
        load_classifier(folder)


def test_downloads_without_a_network_fail_in_seconds_with_one_line(monkeypatch, capsys, tmp_path):
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    # setenv records each variable, so what main() sets is undone after the test.
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "FVIT_HUB_UNREACHABLE"):
        monkeypatch.setenv(name, "")
    monkeypatch.setattr(socket, "create_connection", no_network)
    image = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    image.save(tmp_path / "x.png")
    assert main(["analyze", str(tmp_path / "x.png"), "--classifier", "vit_tiny_patch16_224", "--allow-download"]) == 2
    line = _one_error_line(capsys)
    assert "no network: huggingface.co did not answer" in line and "hub cache" in line
    assert os.environ["HF_HUB_OFFLINE"] == "1"


# ---------------------------------------------------------------------------------- model configs


@pytest.mark.parametrize("change, message", [
    ({"depth": 100_000}, "depth = 100000 is outside 1..128"),
    ({"embed_dim": 4096, "depth": 48}, "cannot hold"),  # within the ranges, but far beyond the file
    ({"num_heads": "three"}, "num_heads = three is outside"),
    ({"img_size": [32, 10**30]}, "img_size = a number of 31 digits is outside"),
])
def test_a_classifier_config_out_of_bounds_is_refused_before_the_model_is_built(tiny_pair_dir, tmp_path, change,
                                                                                 message, monkeypatch):
    import timm

    from fvit_core.models import load_classifier

    folder = tmp_path / "clf"
    shutil.copytree(tiny_pair_dir / "classifier", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    built = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(a))
    with pytest.raises(ModelLoadError, match=message):
        load_classifier(folder)
    assert built == []  # refused before timm allocates anything


@pytest.mark.parametrize("where, change, message", [
    ("unet", {"layers_per_block": 10_000}, "layers_per_block = 10000 is outside 1..64"),
    ("unet", {"block_out_channels": [4096, 4096, 4096, 4096]}, "cannot hold"),
    ("unet", {"sample_size": 10**9}, "sample_size = 1000000000 is outside"),
    ("scheduler", {"num_train_timesteps": 10**9}, "num_train_timesteps = 1000000000 is outside 2..100000"),
])
def test_a_denoiser_config_out_of_bounds_is_refused_before_the_model_is_built(tiny_pair_dir, tmp_path, where, change,
                                                                               message):
    from fvit_core.models import load_denoiser

    folder = tmp_path / "den"
    shutil.copytree(tiny_pair_dir / "denoiser", folder)
    path = folder / where / ("config.json" if where == "unet" else "scheduler_config.json")
    config = json.loads(path.read_text())
    config.update(change)
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        load_denoiser(folder)


def test_the_shipped_and_test_configs_pass_the_bounds(tiny_pair_dir):
    from fvit_core.models import load_classifier, load_denoiser, load_pair

    assert load_pair("default").classifier.num_classes == 10
    assert load_classifier(tiny_pair_dir / "classifier") is not None and load_denoiser(tiny_pair_dir / "denoiser")


# ---------------------------------------------------------------------------------- convert-adm

ADM_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "adm")


def _small_adm(tmp_path):
    import torch
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(os.path.join(ADM_FIXTURES, "small_weights.safetensors")).items()}
    flags = json.loads(open(os.path.join(ADM_FIXTURES, "small_flags.json")).read())
    return state, flags, torch


@pytest.mark.parametrize("change, message", [
    ({"num_channels": 100_000}, "num_channels must be a whole number in 1..1,024"),
    ({"num_res_blocks": 100_000}, "num_res_blocks must be a whole number in 1..8"),
    ({"diffusion_steps": 10**9}, "diffusion_steps must be a whole number in 2..100,000"),
    ({"diffusion_steps": "1" * 5000}, "a value of 5002 characters"),
    ({"dropout": "abc"}, "dropout must be a number in \\[0, 1\\)"),
    ({"dropout": float("nan")}, "dropout must be a number in \\[0, 1\\)"),
    ({"channel_mult": "1,2,2,2,2,2,2,2,2"}, "at most 8 comma-separated"),
])
def test_absurd_adm_flags_are_refused_in_one_line(tmp_path, change, message, capsys):
    state, flags, torch = _small_adm(tmp_path)
    torch.save(state, tmp_path / "small.pt")
    (tmp_path / "flags.json").write_text(json.dumps({**flags, **change}))
    assert main(["convert-adm", str(tmp_path / "small.pt"), str(tmp_path / "out"), "--flags",
                 str(tmp_path / "flags.json")]) == 2
    assert re_search(message, _one_error_line(capsys)) and not (tmp_path / "out").exists()


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


@pytest.mark.parametrize("kind", ["integer key", "sparse", "meta", "complex"])
def test_checkpoints_with_odd_tensors_are_refused(tmp_path, kind):
    from fvit_core.models.adm import read_checkpoint

    state, _, torch = _small_adm(tmp_path)
    name = next(iter(state))
    if kind == "integer key":
        state[7] = state.pop(name)
    elif kind == "sparse":
        state[name] = state[name].reshape(-1).to_sparse()
    elif kind == "meta":
        state[name] = torch.empty(state[name].shape, device="meta")
    else:
        state[name] = state[name].to(torch.complex64)
    path = tmp_path / "odd.pt"
    try:
        torch.save(state, path)
    except (RuntimeError, NotImplementedError):  # torch cannot even write this kind: nothing to read back
        pytest.skip(f"torch.save refuses a {kind} tensor")
    with pytest.raises(ModelLoadError, match={"integer key": "names must be text", "sparse": "sparse tensor",
                                              "meta": "meta tensor|cannot read", "complex": "complex one"}[kind]):
        read_checkpoint(path)


def test_a_compressed_checkpoint_that_inflates_past_its_network_is_refused_before_reading(tmp_path):
    import zipfile

    from fvit_core.models.adm import check_checkpoint_size, resolve_flags

    _, flags, _ = _small_adm(tmp_path)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", b"\0" * (64 << 20))  # 64 MB of zeros in about 64 kB
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ModelLoadError, match="inflates to 67,108,864 bytes"):
        check_checkpoint_size(bomb, resolve_flags(flags))


def test_a_failed_conversion_leaves_no_output_folder(tmp_path, monkeypatch):
    from fvit_core.models import adm

    state, flags, torch = _small_adm(tmp_path)
    torch.save(state, tmp_path / "small.pt")

    def broken(arch):
        raise RuntimeError("disk full")

    monkeypatch.setattr(adm, "scheduler_config", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        adm.convert_adm(tmp_path / "small.pt", tmp_path / "out", flags=flags)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pt"]  # no out/, no staging folder


def test_the_dashboard_package_imports_its_lazy_libraries_once_up_front():
    """Five first visits at once imported pandas in five script threads ("partially initialized
    module 'pandas'"); importing the app package (serialised by Python's import lock) now does it."""
    import subprocess
    import sys

    code = "import sys, app\nprint(all(m in sys.modules for m in ('pandas', 'plotly.graph_objects', 'matplotlib')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "True", done.stderr[-1000:]
