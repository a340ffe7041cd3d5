"""`fvit analyze` end to end through the console entry point, offline, on a locally saved pair."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

FAST = ["--n-samples", "4", "--steps", "2", "--k", "4", "--batch-size", "32"]


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "fvit_core.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"small.png": (32, 32), "photo.jpg": (480, 640)}.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / name)
    (folder / "notes.png").write_text("not an image")
    return folder


@pytest.mark.parametrize("name", ["small.png", "photo.jpg"])
def test_analyze_writes_the_documented_json(tiny_pair_dir, images, tmp_path, name):
    out = tmp_path / "r.json"
    res = _run(["analyze", str(images / name), "--classifier", str(tiny_pair_dir / "classifier"),
                "--denoiser", str(tiny_pair_dir / "denoiser"), "--eps", "8/255", *FAST, "--json", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["config"]["eps"] == pytest.approx(8 / 255)
    assert data["attack"]["linf"] <= 8 / 255 + 1e-6
    assert data["fvit"]["n_samples"] == 4 and len(data["vanilla"]["clean"]["attention"]) == 16
    timing = data["timing"]
    assert timing["load"] > 0 and timing["total"] >= timing["load"] + timing["smoothing"]
    assert data["fvit"]["stopped_early"] is False


def test_config_file_is_reproduced_and_flags_override_it(tiny_pair_dir, images, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"sigma": 0.5, "k": 3, "seed": 7, "n_samples": 4, "steps": 2, "attack": "pgd",
                                    "eps": 2 / 255, "classifier": str(tiny_pair_dir / "classifier"),
                                    "denoiser": str(tiny_pair_dir / "denoiser")}))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _run(["analyze", str(images / "small.png"), "--config", str(settings), "--json", str(a)], tmp_path).returncode == 0
    assert _run(["analyze", str(images / "small.png"), "--config", str(settings), "--k", "2", "--json", str(b)],
                tmp_path).returncode == 0
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ja["config"]["sigma"] == 0.5 and ja["config"]["k"] == 3 and jb["config"]["k"] == 2
    assert ja["fvit"]["clean"] == jb["fvit"]["clean"]  # same seed and settings: same estimates


@pytest.mark.parametrize("args, message", [
    (["analyze", "{img}/notes.png"], "not a readable image"),
    (["analyze", "{img}/missing.png"], "cannot read"),
    (["analyze", "{img}/small.png", "--sigma", "-1"], "sigma"),
    (["analyze", "{img}/small.png", "--attack", "nope"], "unknown attack"),
    (["analyze", "{img}/small.png", "--k", "999"], "exceeds"),
])
def test_errors_are_one_line_without_traceback(tiny_pair_dir, images, tmp_path, args, message):
    args = [a.replace("{img}", str(images)) for a in args]
    res = _run([*args[:2], *FAST, *args[2:], "--classifier", str(tiny_pair_dir / "classifier"),
                "--denoiser", str(tiny_pair_dir / "denoiser")], tmp_path)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["analyze", "x.png", "--sigmaa", "0.5"], "unrecognized arguments: --sigmaa 0.5"),
    (["analyze"], "the following arguments are required: image"),
    (["analyse", "x.png"], "invalid choice: 'analyse'"),
    (["eval", "--data"], "expected one argument"),
    (["certify", "--n", "many"], "--n"),
    ([], "the following arguments are required: command"),
])
def test_a_wrong_option_is_one_line_naming_the_help(tmp_path, args, message):
    """argparse printed its usage block (3 to 16 lines) before the error; the README promises one."""
    res = _run(args, tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert message in lines[0] and "--help lists the options" in lines[0] and "usage:" not in res.stderr


def test_analyze_says_when_it_shrinks_or_stretches_a_photo(tiny_pair_dir, tmp_path):
    """A 640x320 photo for a 32x32 model: the command says so on stderr (as the dashboard does
    beside the upload) and the JSON keeps the original size."""
    photo = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (320, 640, 3), dtype=np.uint8)).save(photo)
    res = _run(["analyze", str(photo), *FAST, "--classifier", str(tiny_pair_dir / "classifier"),
                "--denoiser", str(tiny_pair_dir / "denoiser"), "--json", str(tmp_path / "r.json")], tmp_path)
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if line.startswith("fvit analyze: note: ")]
    assert len(notes) == 1 and "640×320" in notes[0] and "20×" in notes[0], res.stderr
    image = json.loads((tmp_path / "r.json").read_text())["image"]
    assert image["original_size"] == [320, 640] and image["fit_notice"] in notes[0]


def test_bad_flag_value_exits_non_zero(tmp_path):
    res = _run(["analyze", "x.png", "--eps", "eight"], tmp_path)
    assert res.returncode == 2 and "not a number" in res.stderr


@pytest.mark.parametrize("args", [["--help"], ["analyze", "x.png", "--eps", "eight"], ["eval", "--help"]])
def test_help_and_option_errors_do_not_import_torch(args):
    """`fvit --help` and argparse errors answer before the engine (torch) is imported."""
    code = ("import sys\nfrom fvit_core.cli.main import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)" % (args,))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stderr.strip().splitlines()[-1] == "NO-TORCH", res.stderr


def test_the_engine_imports_no_optional_library_before_it_is_needed():
    """Importing the CLI and the analysis engine (issue 24's start-up) loads none of scipy.stats,
    scipy.optimize, torchattacks, timm, diffusers or matplotlib: models, attacks and figures
    import their libraries when they are used."""
    heavy = ("scipy.stats", "scipy.optimize", "torchattacks", "timm", "diffusers", "matplotlib", "pandas")
    code = ("import sys\nimport fvit_core.cli.main, fvit_core.cli.analyze, fvit_core.analysis.pipeline\n"
            "import fvit_core.method.certify, fvit_core.metrics, fvit_core.analysis.certificates\n"
            f"print([m for m in {heavy!r} if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]


def test_the_quick_exit_runs_atexit_handlers_and_keeps_the_exit_status(tiny_pair_dir, images, tmp_path):
    """`fvit` skips the interpreter's teardown (1.2-1.4 s) once torch is loaded, but atexit
    handlers still run, the JSON is complete and the status is main()'s."""
    out = tmp_path / "r.json"
    script = ("import atexit, sys\natexit.register(lambda: print('ATEXIT RAN', flush=True))\n"
              "sys.argv = ['fvit'] + sys.argv[1:]\nfrom fvit_core.cli.main import run\nrun()\n")
    models = ["--classifier", str(tiny_pair_dir / "classifier"), "--denoiser", str(tiny_pair_dir / "denoiser")]
    ok = subprocess.run([sys.executable, "-c", script, "analyze", str(images / "small.png"), *models, *FAST,
                         "--json", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert ok.returncode == 0 and "ATEXIT RAN" in ok.stdout, ok.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["fvit"]["n_samples"] == 4 and data["timing"]["total"] > 0
    bad = subprocess.run([sys.executable, "-c", script, "analyze", str(images / "notes.png"), *models, *FAST],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "ATEXIT RAN" in bad.stdout, bad.stderr[-2000:]
    assert len(bad.stderr.strip().splitlines()) == 1 and "fvit analyze: error:" in bad.stderr


def test_attacks_lists_budgets_as_fractions_of_255(tmp_path):
    res = _run(["attacks"], tmp_path)
    assert res.returncode == 0, res.stderr
    pgd = next(line for line in res.stdout.splitlines() if line.startswith("pgd "))
    assert "eps=8/255" in pgd and "alpha=1.6/255" in pgd and "0.0313" not in res.stdout


def test_budget_text_is_exact_or_says_two_decimals():
    from fvit_core.cli.analyze import budget_text, fraction_of_255

    assert budget_text(8 / 255) == "8/255" and budget_text(np.float32(8 / 255)) == "8/255"
    assert budget_text(1.6 / 255) == "1.6/255" and budget_text(0.01) == "2.55/255"
    assert fraction_of_255(1 / 7) is None and budget_text(1 / 7) == "36.43/255"


def test_summary_prints_abstain_for_an_abstaining_certificate(tiny_pair_dir, images, tmp_path):
    """4 samples cannot certify: even 4 of 4 votes give p_A >= 0.001^(1/4) = 0.18 < 1/2, so
    CERTIFY abstains, and the summary must say so rather than print a radius of 0."""
    res = _run(["analyze", str(images / "small.png"), "--classifier", str(tiny_pair_dir / "classifier"),
                "--denoiser", str(tiny_pair_dir / "denoiser"), *FAST, "--json", str(tmp_path / "r.json")], tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "r.json").read_text())["fvit"]["certified"]["predicted_class"] < 0
    line = next(x for x in res.stdout.splitlines() if x.startswith("certified:"))
    assert line.startswith("certified: class radius abstain,")
