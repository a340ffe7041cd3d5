"""Reliability, round two (issue 15): bounded decode time and memory, the dashboard's model guard,
settings files, random-weight model names, decoder warnings, unreadable images in batch runs,
output paths and temporary files. Counts and measured budgets are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import io
import json
import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from app import image_sources, model_sources
from fuzz_corpus import build_corpus, encode_image, jpeg_segments, noise_rgb, progressive_scan_bomb
from fvit_core import errors
from fvit_core.cli import main as cli
from fvit_core.data import images
from fvit_core.data import files
from fvit_core.data.images import ImageError, load_image


def _cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run ``fvit`` in-process; (exit code, lines written to standard error)."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.splitlines()


# =============================================================================================
# Decode time: refused by structure, and a budget checked while decoding
# =============================================================================================


def test_progressive_scan_bomb_is_refused_by_its_structure_before_decoding(monkeypatch) -> None:
    bomb = progressive_scan_bomb(64, 1000)  # 11 kB, 64x64: refused for its 1000 scans, not its size
    assert len(bomb) < 20_000 and bomb.count(b"\xff\xda") == 1000
    assert sum(marker == 0xDA for marker, _, _ in jpeg_segments(bomb)) == 1000  # real scans, not stray bytes
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or None)
    with pytest.raises(ImageError, match=r"JPEG file has 1,000 scans, over the limit of 100 .* re-export it$") as info:
        load_image(bomb)
    assert loads == []  # refused before a single pixel was decoded
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_scan_limit_is_exact_and_ordinary_progressive_files_decode() -> None:
    ordinary = encode_image(Image.fromarray(noise_rgb(48, 64)), "JPEG", progressive=True, quality=90)
    assert 2 <= ordinary.count(b"\xff\xda") <= 12  # what an encoder writes
    assert load_image(ordinary).shape == (3, 48, 64)
    at_limit = progressive_scan_bomb(32, images.MAX_JPEG_SCANS)
    assert at_limit.count(b"\xff\xda") == images.MAX_JPEG_SCANS
    assert load_image(at_limit).shape == (3, 32, 32)  # repeated scans are legal JPEG: decoded
    with pytest.raises(ImageError, match=f"has {images.MAX_JPEG_SCANS + 1} scans"):
        load_image(progressive_scan_bomb(32, images.MAX_JPEG_SCANS + 1))


class _Clock:
    """A fake monotonic clock: every reading is one second later."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_decode_over_its_time_budget_is_stopped_at_its_next_read(monkeypatch) -> None:
    # A 16-row-per-chunk PNG decode reads many 64 kB pieces; with a clock that advances one second
    # per reading, a 5 s budget must stop it after about 5 reads, in this thread, with one line.
    data = encode_image(Image.fromarray(noise_rgb(600, 800)), "PNG")
    assert len(data) > 10 * 65536
    reads = []
    real_read = io.BytesIO.read
    monkeypatch.setattr(images._BudgetedBytes, "read", lambda self, size=-1: (
        reads.append(size), self.check(), real_read(self, size))[-1])
    monkeypatch.setattr(images, "_clock", _Clock())
    threads = threading.active_count()
    with pytest.raises(ImageError, match=r"^decoding took longer than 5 s and was stopped: .* re-export it$"):
        load_image(data, max_seconds=5.0)
    assert 1 <= len(reads) <= 6  # clock readings: 1 at the start, then 1 per read
    assert threading.active_count() == threads  # nothing left running
    monkeypatch.setattr(images, "_clock", _Clock())
    assert load_image(data, max_seconds=None).shape == (3, 600, 800)  # no budget: decodes


def test_dashboard_decodes_with_a_budget(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(image_sources, "load_image", lambda data, **kw: seen.update(kw) or np.zeros((3, 4, 4), np.float32))
    image_sources.load_upload("x.png", b"png")
    assert seen["max_seconds"] == image_sources.MAX_DECODE_SECONDS == 15.0
    assert seen["max_pixels"] == image_sources.MAX_UPLOAD_PIXELS


# =============================================================================================
# Decode memory: band-wise conversion
# =============================================================================================


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P+tRNS", "I;16"])
def test_conversion_allocates_little_beyond_the_result(mode: str) -> None:
    # numpy reports its allocations to tracemalloc (Pillow's do not): the float32 result is 12
    # bytes per pixel; the old whole-image conversion allocated about 45 more for RGBA.
    side = 1600
    rgb = Image.fromarray(noise_rgb(side, side, 3))
    image = {"RGB": rgb, "RGBA": Image.fromarray(np.dstack([noise_rgb(side, side, 4), noise_rgb(side, side, 5)[..., 0]]), "RGBA"),
             "P+tRNS": rgb.convert("P"), "I;16": Image.fromarray(noise_rgb(side, side, 6)[..., 0].astype(np.uint16) * 257)}[mode]
    kwargs = {"transparency": 0} if mode == "P+tRNS" else {}
    data = encode_image(image, "PNG", **kwargs)
    tracemalloc.start()
    try:
        pixels = load_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = pixels.nbytes
    assert result == 12 * side * side
    assert peak - result < 16_000_000, f"{mode}: {(peak - result) / 1e6:.1f} MB of temporaries"


def test_band_conversion_gives_the_whole_image_numbers(monkeypatch) -> None:
    rgba = Image.fromarray(np.dstack([noise_rgb(70, 50, 1), noise_rgb(70, 50, 2)[..., 0]]), "RGBA")
    data = encode_image(rgba, "PNG")
    whole = load_image(data)
    monkeypatch.setattr(images, "_BAND_PIXELS", 60)  # one row per band
    assert np.array_equal(load_image(data), whole)
    expected = np.asarray(rgba, dtype=np.float32) / 255.0
    composite = expected[..., :3] * expected[..., 3:] + (1.0 - expected[..., 3:])
    assert np.array_equal(whole, composite.transpose(2, 0, 1))


# =============================================================================================
# Decoder warnings and truncated files
# =============================================================================================


def _truncated_tiffs() -> list[tuple[str, bytes]]:
    cases = [(c.name, c.data) for c in build_corpus() if c.family == "truncated" and c.name.endswith(".tiff")]
    image = Image.fromarray(noise_rgb(60, 80, 7))
    for compression in ("tiff_adobe_deflate", "tiff_lzw", "jpeg", "packbits"):
        data = encode_image(image, "TIFF", compression=compression)
        cases += [(f"{compression}_{cut}", data[: int(len(data) * cut)]) for cut in (0.05, 0.5, 0.95)]
    return cases


def test_truncated_tiffs_are_called_truncated_and_print_nothing(capfd) -> None:
    cases = _truncated_tiffs()
    assert len(cases) == 8 + 12
    for name, data in cases:
        with pytest.raises(ImageError, match=r"^truncated TIFF file|^corrupted or truncated TIFF file") as info:
            load_image(data)
        assert "\n" not in str(info.value) and "cannot identify" not in str(info.value), name
    out, err = capfd.readouterr()  # fd-level: Python warnings and anything libtiff writes
    assert out == "" and err == "", err[:500]


def test_every_refused_truncation_is_called_truncated(capfd) -> None:
    cases = [c for c in build_corpus() if c.family == "truncated"]
    refused = 0
    for case in cases:
        try:
            load_image(case.data)
        except ImageError as exc:
            refused += 1
            assert "truncated" in str(exc) and "cannot identify" not in str(exc), (case.name, str(exc))
    assert len(cases) == 48 and refused >= 46  # a GIF cut after its first frame's data still decodes
    assert capfd.readouterr() == ("", "")


def test_truncated_tiff_in_the_cli_is_one_line(tmp_path, capfd) -> None:
    path = tmp_path / "cut.tiff"
    path.write_bytes(_truncated_tiffs()[0][1])
    assert cli.main(["analyze", str(path)]) == 2
    out, err = capfd.readouterr()
    assert err.count("\n") == 1 and err.startswith("fvit analyze: error: truncated TIFF file"), err


# =============================================================================================
# The dashboard's model guard is models.resolve_model_dir
# =============================================================================================


def _copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_dashboard_lists_and_loads_only_what_resolve_model_dir_accepts(tiny_pair_dir, tmp_path) -> None:
    from fvit_core.models import resolve_model_dir

    outside = _copy_folder(tiny_pair_dir, tmp_path / "outside")
    root = tmp_path / "models"
    root.mkdir()
    _copy_folder(tiny_pair_dir / "classifier", root / "vit")
    _copy_folder(tiny_pair_dir / "denoiser", root / "ddpm")
    # The red team's four: a weights file linked out, a unet/ folder linked out, a weights file
    # inside unet/ linked out, and a hidden folder.
    linked_weights = _copy_folder(tiny_pair_dir / "classifier", root / "vit-linked-weights")
    (linked_weights / "model.safetensors").unlink()
    (linked_weights / "model.safetensors").symlink_to(outside / "classifier" / "model.safetensors")
    linked_unet = _copy_folder(tiny_pair_dir / "denoiser", root / "ddpm-linked-unet")
    if (linked_unet / "unet").is_dir():
        import shutil

        shutil.rmtree(linked_unet / "unet")
        (linked_unet / "unet").symlink_to(outside / "denoiser" / "unet")
        deep = _copy_folder(tiny_pair_dir / "denoiser", root / "ddpm-linked-deep")
        weights = next((deep / "unet").glob("*.safetensors"))
        weights.unlink()
        weights.symlink_to(next((outside / "denoiser" / "unet").glob("*.safetensors")))
    _copy_folder(tiny_pair_dir / "classifier", root / ".hidden-vit")
    bad = sorted(p.name for p in root.iterdir() if p.name not in ("vit", "ddpm"))
    assert len(bad) >= 3
    for name in bad:  # the engine's guard refuses each
        with pytest.raises(ValueError):
            resolve_model_dir(name, root)
    assert model_sources.local_model_folders("classifier", root) == ["vit"]
    assert model_sources.local_model_folders("denoiser", root) == ["ddpm"]
    assert Path(model_sources.resolve_local_model("vit", "classifier", root)) == (root / "vit").resolve()
    for name in bad:  # and the dashboard refuses to load them by name
        with pytest.raises(ValueError, match="links outside the models directory|is not a model name"):
            model_sources.resolve_local_model(name, "denoiser" if "ddpm" in name else "classifier", root)


# =============================================================================================
# Settings files: regular, small, errors short
# =============================================================================================


@pytest.fixture
def small_png(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(noise_rgb(32, 32)).save(path)
    return path


def test_settings_files_must_be_small_regular_files(tmp_path, small_png, capsys) -> None:
    fifo = tmp_path / "settings.fifo"
    os.mkfifo(fifo)  # reading it would block forever
    big = tmp_path / "big.json"
    big.write_text('{"seed": 1, "pad": "' + "x" * 2_000_000 + '"}')
    cases = {
        "/dev/zero": "is not a regular file",
        str(fifo): "is not a regular file",
        str(tmp_path): "is not a regular file",
        str(big): r"is 2,000,0\d\d bytes, over the limit of 1,000,000",
        str(tmp_path / "missing.json"): "No such file",
    }
    for path, message in cases.items():
        code, err = _cli(capsys, "analyze", str(small_png), "--config", path)
        assert code == 2 and len(err) == 1, (path, err)
        assert err[0].startswith("fvit analyze: error:") and __import__("re").search(message, err[0]), err[0]


def test_echoed_values_are_cut(tmp_path, small_png, capsys) -> None:
    long = 900_000  # under the 1 MB file limit: the value itself must not reach the error line
    for settings in ({"seed": "9" * long}, {"x" * long: 1}, {"attack": "p" * long}, {"model": "m" * long},
                     {"n_samples": 10**400}, {"sigma": 1e-300}, {"multistep_steps": 10**9, "mode": "multistep"},
                     {"attack_params": {"steps": 10**400}}, {"config": [1] * 1000}):
        path = tmp_path / "s.json"
        path.write_text(json.dumps(settings))
        code, err = _cli(capsys, "analyze", str(small_png), "--config", str(path))
        assert code == 2 and len(err) == 1 and len(err[0]) <= errors.MAX_ERROR_CHARS + 30, (str(settings)[:40], err[0][:200])


def test_cli_error_lines_are_capped() -> None:
    assert len(errors.one_line(ValueError("y" * 10_000_000))) == errors.MAX_ERROR_CHARS


# =============================================================================================
# A timm name without downloads would be random weights: refused, saying how
# =============================================================================================


def test_timm_name_without_downloads_is_refused(small_png, tiny_pair_dir, capsys) -> None:
    code, err = _cli(capsys, "analyze", str(small_png), "--classifier", "vit_tiny_patch16_224",
                     "--denoiser", str(tiny_pair_dir / "denoiser"))
    assert code == 2 and len(err) == 1
    assert "weights would be random" in err[0] and "--allow-download" in err[0] and "FVIT_ALLOW_DOWNLOAD=1" in err[0]


# =============================================================================================
# Batch runs: an unreadable image is named, skipped and counted; --strict stops
# =============================================================================================


@pytest.fixture
def folder_with_a_broken_image(image_folder, tmp_path) -> Path:
    root = _copy_folder(image_folder, tmp_path / "data")
    (root / "b" / "1.png").write_bytes((root / "b" / "1.png").read_bytes()[:60])  # truncated
    return root


def _eval_args(data: Path, out: Path, tiny_pair_dir: Path) -> list[str]:
    return ["eval", "--data", str(data), "--out", str(out), "--classifier", str(tiny_pair_dir / "classifier"),
            "--denoiser", str(tiny_pair_dir / "denoiser"), "--mode", "vanilla,dds", "--n-samples", "4",
            "--pt-samples", "2", "--k", "4", "--steps", "1", "--no-progress", "--no-figures"]


def test_eval_skips_an_unreadable_image_and_counts_it(folder_with_a_broken_image, tiny_pair_dir, tmp_path,
                                                        capsys) -> None:
    out = tmp_path / "out"
    assert cli.main(_eval_args(folder_with_a_broken_image, out, tiny_pair_dir)) == 0
    printed = capsys.readouterr().out
    assert "1 unreadable image(s) skipped" in printed and "2 missing" in printed
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 2 and "b/1.png" not in {row["image"] for row in rows}
    info = json.loads((out / "run_info.json").read_text())
    assert info["images_skipped"] == 1 and info["skipped"][0]["image"] == "b/1.png"
    assert "truncated PNG file" in info["skipped"][0]["reason"]
    assert "1 image(s) could not be read" in (out / "summary.md").read_text()
    assert "`b/1.png`" in (out / "summary.md").read_text()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no rank or temporary files left


def test_eval_strict_stops_with_the_path(folder_with_a_broken_image, tiny_pair_dir, tmp_path, capsys) -> None:
    code, err = _cli(capsys, *_eval_args(folder_with_a_broken_image, tmp_path / "out", tiny_pair_dir), "--strict")
    assert code == 2 and len(err) == 1
    assert str(folder_with_a_broken_image / "b" / "1.png") in err[0] and "truncated PNG file" in err[0]


# =============================================================================================
# Output paths before work; temporary files unique and removed on failure
# =============================================================================================


def test_json_pointing_to_a_folder_fails_before_the_analysis(small_png, tmp_path, capsys, monkeypatch) -> None:
    from fvit_core.cli import analyze as analyze_cli
    from fvit_core.analysis import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "analyze", lambda *a, **k: calls.append("analyze"))
    monkeypatch.setattr(images, "load_image", lambda *a, **k: calls.append("decode"))
    target = tmp_path / "result"
    target.mkdir()
    code, err = _cli(capsys, "analyze", str(small_png), "--json", str(target))
    assert code == 2 and err == [f"fvit analyze: error: --json {target} is a folder; give a file name"]
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "result"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _cli(capsys, "analyze", str(small_png), "--out", str(blocker))
    assert code == 2 and "exists and is not a folder" in err[0] and calls == []
    code, err = _cli(capsys, "analyze", str(small_png), "--json", str(blocker / "deeper" / "r.json"))
    assert code == 2 and "is not a folder" in err[0] and calls == []
    assert analyze_cli  # the module whose checks these are


def test_atomic_writes_leave_no_temporary_file_on_failure(tmp_path, monkeypatch) -> None:
    folder_target = tmp_path / "taken"
    folder_target.mkdir()
    with pytest.raises(OSError):
        files.atomic_write_text(folder_target, "x")  # the rename fails: the target is a folder

    def disk_full(tmp):
        Path(tmp).write_text("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.atomic_write(tmp_path / "rows.jsonl", disk_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    names = set()
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (names.add(Path(src).name), real_replace(src, dst)))
    for _ in range(3):
        files.atomic_write_text(tmp_path / "summary.md", "text")
    assert len(names) == 3 and all(n.startswith(".summary.md.") and n.endswith(".tmp.md") for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md", "taken"]
