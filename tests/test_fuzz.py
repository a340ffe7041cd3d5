"""Fuzzing the input side: the image loader, `fvit analyze` and the dashboard's upload.

Three drivers, one contract (docs/RELIABILITY.md): every input either decodes to finite float32
pixels (3, H, W) in [0, 1] or is refused with an ImageError (a ValueError) whose message is one
actionable line; the CLI exits 0 with valid JSON or 2 with one line on stderr; the app shows a
message, never a traceback; no NaN anywhere.

- A generated corpus (tests/fuzz_corpus.py: ~290 malformed and unusual files, built at test
  time into tmp) with an expectation per file;
- hypothesis: structure-aware generators that write syntactically plausible headers of every
  supported format (random sizes, bit depths, colour types, compression, palettes, tags), so
  the fuzzing reaches the decoders instead of stopping at the magic bytes.
"""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from fuzz_corpus import FORMAT_EXT, CorpusCase, build_corpus, family_counts, write_corpus
from fvit_core.data.images import ImageError, load_image

CASES: list[CorpusCase] = build_corpus()
REPO = Path(__file__).resolve().parent.parent
APP = REPO / "app" / "streamlit_app.py"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_corpus")
    write_corpus(folder)
    return folder


def _load_quietly(source, **limits) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the corrupt EXIF / TIFF tags we make
        return load_image(source, **limits)


def _assert_pixels(array: np.ndarray) -> None:
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    assert array.ndim == 3 and array.shape[0] == 3 and array.shape[1] >= 1 and array.shape[2] >= 1
    assert np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0


def _assert_user_message(message: str) -> None:
    """One line, not empty, no traceback or repr noise, short enough to show in a toast."""
    assert message and "\n" not in message and len(message) < 400, message
    assert "Traceback" not in message and "File \"" not in message


def _decode_outcome(source) -> tuple[str, np.ndarray | str]:
    try:
        return "ok", _load_quietly(source)
    except ImageError as exc:
        _assert_user_message(str(exc))
        return "error", str(exc)


def _red_corner(pixels: np.ndarray) -> str:
    h, w = pixels.shape[1:]
    corners = {"top-left": pixels[:, 0, 0], "top-right": pixels[:, 0, w - 1],
               "bottom-left": pixels[:, h - 1, 0], "bottom-right": pixels[:, h - 1, w - 1]}
    return max(corners, key=lambda name: corners[name][0] - corners[name][2])


# ---------------------------------------------------------------------------------------------
# The corpus itself
# ---------------------------------------------------------------------------------------------


def test_corpus_is_large_and_covers_every_family() -> None:
    assert len(CASES) >= 200
    families = family_counts(CASES)
    for family in ("valid format x mode", "1x1 and extreme aspect", "EXIF orientation", "decompression bomb",
                   "truncated", "byte flips", "not an image / unsupported", "wrong extension"):
        assert families.get(family, 0) >= 3, family
    valid_formats = {case.name.rsplit(".", 1)[-1] for case in CASES if case.family == "valid format x mode"}
    assert set(FORMAT_EXT.values()) <= valid_formats
    assert sum(case.expect == "ok" for case in CASES) >= 80 and sum(case.expect == "error" for case in CASES) >= 80


def test_corpus_is_deterministic() -> None:
    again = build_corpus()
    assert [(c.name, c.data) for c in again] == [(c.name, c.data) for c in CASES]


# ---------------------------------------------------------------------------------------------
# The loader on every corpus file, from a path and from bytes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_loader_on_corpus(case: CorpusCase, corpus_dir: Path) -> None:
    outcome, value = _decode_outcome(corpus_dir / case.name)
    same_outcome, same_value = _decode_outcome(case.data)
    assert outcome == same_outcome  # a path and its bytes are the same input
    if outcome == "ok":
        assert np.array_equal(value, same_value)
        _assert_pixels(value)
    detail = value if outcome == "error" else ""
    assert case.expect in (outcome, "either"), f"{case.name}: expected {case.expect}, got {outcome} {detail}"
    if outcome == "ok" and case.size is not None:
        assert value.shape[1:] == case.size
    if outcome == "ok" and case.red_corner is not None:
        assert _red_corner(value) == case.red_corner


def test_truncated_image_setting_is_never_switched_on(corpus_dir: Path) -> None:
    for case in CASES:
        if case.family == "truncated":
            _decode_outcome(case.data)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", list(FORMAT_EXT))
def test_pixel_limit_is_checked_before_any_pixel_is_decoded(fmt: str, monkeypatch) -> None:
    """A valid 300x200 file with a 59,999-pixel limit is refused from its header alone."""
    data = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(data, format=fmt)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self, *a, **k: decoded.append(1) or real_load(self, *a, **k))
    with pytest.raises(ImageError, match="300x200 = 60,000 pixels, over the limit of 59,999"):
        load_image(data.getvalue(), max_pixels=59_999)
    assert not decoded
    assert load_image(data.getvalue(), max_pixels=60_000).shape == (3, 200, 300)


# ---------------------------------------------------------------------------------------------
# hypothesis: structure-aware generators for every supported format
# ---------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@st.composite
def png_files(draw) -> bytes:
    width, height = draw(st.integers(0, 3000)), draw(st.integers(0, 3000))
    header = struct.pack(">IIBBBBB", width, height, draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 32])),
                         draw(st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7])), draw(st.integers(0, 1)),
                         draw(st.integers(0, 1)), draw(st.sampled_from([0, 1, 2])))
    extra = b""
    for kind in draw(st.lists(st.sampled_from([b"PLTE", b"tRNS", b"gAMA", b"sRGB", b"iCCP", b"eXIf", b"sBIT", b"bKGD",
                                               b"pHYs", b"tEXt", b"zTXt", b"acTL", b"fcTL"]), max_size=4)):
        extra += _png_chunk(kind, draw(st.binary(max_size=300)))
    raw = draw(st.binary(max_size=4096))
    idat = zlib.compress(raw) if draw(st.booleans()) else raw
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + extra + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


@st.composite
def bmp_files(draw) -> bytes:
    header_size = draw(st.sampled_from([12, 40, 52, 56, 64, 108, 124, 16, 0]))
    width, height = draw(st.integers(-5, 3000)), draw(st.integers(-3000, 3000))
    bpp = draw(st.sampled_from([1, 2, 4, 8, 16, 24, 32, 0, 7, 64]))
    body = draw(st.binary(max_size=4096))
    if header_size == 12:
        info = struct.pack("<IHHHH", 12, width & 0xFFFF, height & 0xFFFF, 1, bpp)
    else:
        info = struct.pack("<IiiHHIIiiII", header_size, width, height, 1, bpp, draw(st.integers(0, 6)), len(body),
                           2835, 2835, draw(st.integers(0, 2**32 - 1)), 0)
        info += draw(st.binary(min_size=max(0, header_size - 40), max_size=max(0, header_size - 40)))
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(body), 0, 0, draw(st.integers(0, 300))) + info + body


@st.composite
def tiff_files(draw) -> bytes:
    tags = {256: (4, draw(st.integers(0, 3000))), 257: (4, draw(st.integers(0, 3000))),
            258: (3, draw(st.sampled_from([1, 2, 4, 8, 12, 16, 24, 32, 64, 0]))),
            259: (3, draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946, 34712, 0]))),
            262: (3, draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32844, 34892]))),
            277: (3, draw(st.integers(0, 6))), 278: (4, draw(st.integers(0, 3000))),
            284: (3, draw(st.sampled_from([1, 2, 0]))), 339: (3, draw(st.sampled_from([1, 2, 3, 4, 0, 7])))}
    if draw(st.booleans()):
        tags[274] = (3, draw(st.integers(0, 10)))  # orientation
    if draw(st.booleans()):
        tags[338] = (3, draw(st.integers(0, 3)))  # extra samples
    if draw(st.booleans()):  # tiles instead of strips
        tags.update({322: (4, draw(st.integers(0, 4096))), 323: (4, draw(st.integers(0, 4096))), 324: (4, 200),
                     325: (4, draw(st.integers(0, 5000)))})
    body = draw(st.binary(max_size=4096))
    data_offset = 8 + 2 + (len(tags) + 2) * 12 + 4
    tags.update({273: (4, data_offset), 279: (4, draw(st.integers(0, 10000)))})
    entries = b"".join(struct.pack("<HHII", tag, 4, 1, value) if kind == 4
                       else struct.pack("<HHIHH", tag, 3, 1, value & 0xFFFF, 0)
                       for tag, (kind, value) in sorted(tags.items()))
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\x00" * 4 + body


@st.composite
def gif_files(draw) -> bytes:
    screen = struct.pack("<HHBBB", draw(st.integers(0, 3000)), draw(st.integers(0, 3000)), draw(st.integers(0, 255)),
                         0, 0)
    control = b""
    if draw(st.booleans()):
        control = (b"!\xf9\x04" + bytes([draw(st.integers(0, 255))]) + struct.pack("<H", draw(st.integers(0, 65535)))
                   + b"\x00\x00")
    frame = struct.pack("<HHHHB", *(draw(st.integers(0, 3000)) for _ in range(4)), draw(st.integers(0, 255)))
    data = draw(st.binary(max_size=2000))
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255] for i in range(0, len(data), 255)) + b"\x00"
    return (b"GIF89a" + screen + draw(st.binary(max_size=768)) + control + b"," + frame
            + bytes([draw(st.integers(0, 12))]) + blocks + b";")


def _valid(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


JPEG, WEBP = _valid("JPEG"), _valid("WEBP")


@st.composite
def mutated_jpeg_webp(draw) -> bytes:
    """Valid JPEG / WebP with random segments rewritten: markers, lengths and sizes stay plausible."""
    data = bytearray(draw(st.sampled_from([JPEG, WEBP])))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, min(len(data) - 1, 400)))  # headers and first scan
        data[position:position + 2] = struct.pack(">H", draw(st.integers(0, 65535)))
    return bytes(data[: draw(st.integers(8, len(data)))])


FUZZ_SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _decoder_contract(data: bytes) -> None:
    """Small limits keep each example fast; the contract is the same at any limit."""
    try:
        pixels = _load_quietly(data, max_pixels=1_000_000)
    except ImageError as exc:
        _assert_user_message(str(exc))
        return
    _assert_pixels(pixels)


@pytest.mark.parametrize("strategy", [png_files(), bmp_files(), tiff_files(), gif_files(), mutated_jpeg_webp()],
                         ids=["png", "bmp", "tiff", "gif", "jpeg-webp"])
def test_structured_fuzz_only_ever_gives_pixels_or_image_error(strategy) -> None:
    @FUZZ_SETTINGS
    @given(strategy)
    def run(data: bytes) -> None:
        _decoder_contract(data)

    run()


@FUZZ_SETTINGS
@given(st.sampled_from([case for case in CASES if case.expect == "ok"]), st.integers(0, 2**32 - 1))
def test_cutting_any_valid_corpus_file_anywhere(case: CorpusCase, cut: int) -> None:
    _decoder_contract(case.data[: cut % max(1, len(case.data))])


# ---------------------------------------------------------------------------------------------
# `fvit analyze` in-process over a corpus subset
# ---------------------------------------------------------------------------------------------


def _cli_subset(count: int = 60) -> list[CorpusCase]:
    """Every family, ok / error / either alike: every k-th case of a deterministic order."""
    ordered = sorted(CASES, key=lambda case: (case.family, case.name))
    step = max(1, len(ordered) // count)
    return ordered[::step][:count]


def _no_non_finite(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"non-finite number {constant} in the JSON")

    return json.loads(text, parse_constant=refuse)


def test_cli_analyze_over_corpus(corpus_dir: Path, tiny_pair_dir: Path, tmp_path: Path, capsys) -> None:
    from fvit_core.cli import main as cli

    subset = _cli_subset()
    assert len(subset) >= 40
    outcomes = {"ok": 0, "error": 0}
    for index, case in enumerate(subset):
        out = tmp_path / f"result{index}.json"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = cli.main(["analyze", str(corpus_dir / case.name), "--classifier", str(tiny_pair_dir / "classifier"),
                             "--denoiser", str(tiny_pair_dir / "denoiser"), "--n-samples", "4", "--steps", "1",
                             "--k", "4", "--batch-size", "64", "--json", str(out)])
        captured = capsys.readouterr()
        assert code in (0, 2), f"{case.name}: exit {code}: {captured.err}"
        if code == 0:
            outcomes["ok"] += 1
            data = _no_non_finite(out.read_text())
            assert len(data["vanilla"]["clean"]["attention"]) == 16 and data["fvit"]["n_samples"] == 4
            assert case.expect != "error", case.name
        else:
            outcomes["error"] += 1
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("fvit analyze: error: "), captured.err
            _assert_user_message(lines[0])
            assert not out.exists()  # no partial JSON
            assert case.expect != "ok", f"{case.name}: {captured.err}"
    assert outcomes["ok"] >= 10 and outcomes["error"] >= 10, outcomes


# ---------------------------------------------------------------------------------------------
# The dashboard's upload (AppTest)
# ---------------------------------------------------------------------------------------------


def _app_subset(count: int = 20) -> list[CorpusCase]:
    return _cli_subset(count)


# The dashboard's own widgets turned down, as tests/test_app.py does (8 samples, 2 attack steps).
APP_QUICK = {"n_samples": 8, "attack.pgd.steps": 2, "bootstrap": 50}


@pytest.mark.slow
@pytest.mark.skipif(not APP.is_file(), reason="app/streamlit_app.py does not exist (the dashboard is not written yet)")
def test_app_upload_over_corpus(monkeypatch) -> None:
    """~20 corpus files through the real upload widget: a message or an analysis, never a traceback."""
    from streamlit.testing.v1 import AppTest

    for name in ("FVIT_MODELS_DIR", "FVIT_SAMPLES_DIR", "FVIT_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(APP), default_timeout=180)
    for key, value in APP_QUICK.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown_ok = shown_error = 0
    for case in _app_subset():
        at.file_uploader(key="upload").set_value((case.name, case.data, "application/octet-stream")).run()
        assert not at.exception, f"{case.name}: {[e.value for e in at.exception]}"
        errors = [e.value for e in at.error]
        for message in errors:
            _assert_user_message(message)
        texts = [str(m.value) for m in at.metric] + [c.value for c in at.caption] + [m.value for m in at.markdown]
        assert not any(re.search(r"\b(nan|inf)\b", text, re.IGNORECASE) for text in texts), case.name
        upload_errors = [m for m in errors if m.startswith("Cannot use ")]
        if case.expect == "error":
            assert len(upload_errors) == 1, f"{case.name}: refused without a message: {errors}"
        if case.expect == "ok":
            assert not upload_errors, f"{case.name}: {errors}"
            assert at.session_state["_current"].image.source == "upload"
        shown_error += bool(upload_errors)
        shown_ok += not upload_errors
    at.file_uploader(key="upload").set_value(None).run()
    assert not at.exception and not at.error
    assert shown_ok >= 5 and shown_error >= 5
