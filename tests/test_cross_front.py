"""One protocol (#12): the same image, settings and seed give the same numbers in every front.

The Python API (``analyze``, which the dashboard calls), ``fvit analyze --json`` and ``fvit eval``
rows agree on the vanilla and FViT labels (clean and attacked), V_k and the noise floor, because
all three draw every stage from protocol/seeds (seed, decoded image digest, stage, settings) and
share the defaults (PGD 8/255 with alpha = eps/5, the bootstrap noise floor).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.pipeline import analyze
from fvit_core.batch.config import EvalConfig
from fvit_core.batch.evaluate import run_eval
from fvit_core.cli.main import main
from fvit_core.data.images import load_image
from fvit_core.models import load_pair

SHARED_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-test-2k"
IMAGE = SHARED_TEST / "airplane" / "0000.jpg"
N_SAMPLES = 16
SEED = 3


@pytest.mark.skipif(not IMAGE.is_file(), reason="shared CIFAR-10 test subset not present")
def test_api_cli_and_eval_give_the_same_numbers(tmp_path):
    pair = load_pair("default")
    # eval attacks the true label, analyze the model's prediction: the same only when they agree.
    config = AnalysisConfig.of(n_samples=N_SAMPLES, seed=SEED)
    api = analyze(load_image(IMAGE), config, pair=pair)
    assert api.vanilla.clean.label_name == "airplane", "pick an image the default model classifies correctly"

    out_json = tmp_path / "analysis.json"
    assert main(["analyze", str(IMAGE), "--n-samples", str(N_SAMPLES), "--seed", str(SEED),
                 "--json", str(out_json)]) == 0
    cli = json.loads(out_json.read_text())

    data = tmp_path / "data" / "airplane"
    data.mkdir(parents=True)
    shutil.copy(IMAGE, data / IMAGE.name)
    out = tmp_path / "eval"
    run_eval(EvalConfig.of(data=str(data.parent), out=str(out), n_samples=N_SAMPLES, seed=SEED,
                        modes=("vanilla", "dds"), perturbation_test=False, figures=False, progress=False))
    rows = {row["mode"]: row for row in map(json.loads, (out / "rows.jsonl").read_text().splitlines())}
    assert set(rows) == {"vanilla", "dds"} and rows["dds"]["n_samples"] == N_SAMPLES

    for name, api_side, cli_side, row in (("vanilla", api.vanilla, cli["vanilla"], rows["vanilla"]),
                                          ("fvit", api.fvit, cli["fvit"], rows["dds"])):
        labels = (api_side.clean.label, api_side.attacked.label)
        assert labels == (cli_side["clean"]["label"], cli_side["attacked"]["label"]), name
        assert labels == (row["pred_clean"], row["pred_attacked"]), name
        assert api_side.topk_overlap == cli_side["topk_overlap"] == row["topk_overlap"], name
    floor = api.faithful.topk_overlap_floor
    assert api.faithful.noise_floor_estimator == cli["fvit"]["noise_floor_estimator"] == "independent"
    assert floor is not None
    assert cli["fvit"]["topk_overlap_floor"] == pytest.approx(floor, abs=1e-12)
    assert rows["dds"]["topk_overlap_floor"] == pytest.approx(floor, abs=1e-12)
    for metric, value in api.faithful.map_metrics_floor.items():
        assert rows["dds"]["map_metrics_floor"][metric] == pytest.approx(value, abs=1e-12, nan_ok=True), metric
