"""fvit certify: Cohen's columns, a hand-checkable certificate, the certified-accuracy table, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from conftest import TINY_VIT_ARGS, make_tiny_vit
from fvit_core.batch.certification import COLUMNS, certified_accuracy, time_seconds
from fvit_core.cli.main import main
from fvit_core.models import save_classifier

CONSTANT_CLASS = 3


@pytest.fixture(scope="module")
def constant_classifier(tmp_path_factory):
    """A tiny ViT whose logits are the same for every input: class 3 wins by 10 nats."""
    model = make_tiny_vit(0)
    with torch.no_grad():
        model.vit.head.weight.zero_()
        model.vit.head.bias.zero_()
        model.vit.head.bias[CONSTANT_CLASS] = 10.0
    folder = tmp_path_factory.mktemp("constant") / "classifier"
    save_classifier(model, folder, model_args=TINY_VIT_ARGS)
    return folder


def _command(image_folder, classifier, denoiser, out, label_map, *extra: str) -> list[str]:
    return ["certify", "--data", str(image_folder), "--out", str(out), "--classifier", str(classifier),
            "--denoiser", str(denoiser), "--label-map", str(label_map), "--sigma", "0.25", "--n0", "10", "--n", "50",
            "--alpha", "0.01", "--k", "4", "--radii", "0,0.25,0.375", "--no-progress", *extra]


def _rows(out) -> tuple[list[str], list[dict]]:
    lines = (out / "certify.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return header, [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_certify_columns_and_a_hand_checkable_certificate(image_folder, tiny_pair_dir, constant_classifier, tmp_path):
    label_map = tmp_path / "labels.json"
    label_map.write_text(json.dumps({"a": CONSTANT_CLASS, "b": "class 0"}))  # by index and by class name
    out = tmp_path / "cert"
    assert main(_command(image_folder, constant_classifier, tiny_pair_dir / "denoiser", out, label_map,
                         "--check-random", "2", "--check-attacks", "--check-samples", "20")) == 0
    header, rows = _rows(out)
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]  # Cohen's certify.py
    assert tuple(header) == COLUMNS
    assert [int(r["idx"]) for r in rows] == list(range(6))
    # Every draw votes for class 3, so n_A = n = 50: p_A_lower = alpha^(1/n) (Clopper-Pearson at
    # n_A = n) and R = sigma * Phi^-1(0.01^(1/50)) = 0.25 * 1.3532 = 0.3383.
    expected = 0.25 * norm.ppf(0.01 ** (1 / 50))
    assert expected == pytest.approx(0.33831, abs=1e-5)
    for row in rows:
        assert int(row["predict"]) == CONSTANT_CLASS
        assert float(row["radius"]) == pytest.approx(expected, abs=1e-12)
        assert int(row["correct"]) == int(row["image"].startswith("a/"))
        assert int(row["label"]) == (CONSTANT_CLASS if row["image"].startswith("a/") else 0)
        assert 0 < time_seconds(row["time"]) < 60
        assert float(row["topk_radius_linf"]) == pytest.approx(float(row["topk_radius"]) / math.sqrt(3 * 32 * 32))
        if float(row["topk_radius"]) > 0:  # V_k at points inside the radius, in quarters (k = 4)
            checks = [float(row[c]) for c in ("check_floor", "check_random_min", "check_pgdl2", "check_topk")]
            assert all(0 <= c <= 1 and (4 * c).is_integer() for c in checks)
    summary = json.loads((out / "certified_accuracy.json").read_text())
    table = {r["radius"]: r["certified_accuracy"] for r in summary["table"]}
    assert table == {0.0: 0.5, 0.25: 0.5, 0.375: 0.0}
    assert summary["abstain_rate"] == 0.0
    positive = sum(float(r["topk_radius"]) > 0 for r in rows)
    assert positive == 0 or summary["certificate_check"]["images"] == positive
    assert {"certified_accuracy.csv", "certified_accuracy.md", "certified_accuracy.png",
            "topk_radius_hist.png"} <= {p.name for p in out.iterdir()}


def test_certified_accuracy_counts_abstentions_as_wrong():
    rows = [{"label": 2, "correct": 1, "predict": 2, "radius": 0.5}, {"label": 3, "correct": 0, "predict": -1, "radius": 0.0},
            {"label": 0, "correct": 1, "predict": 0, "radius": 0.2}, {"label": 4, "correct": 0, "predict": 1, "radius": 0.9}]
    assert certified_accuracy(rows, np.array([0.0, 0.2, 0.3, 0.6])).tolist() == [0.5, 0.5, 0.25, 0.0]


def test_certify_resumes_and_keeps_finished_rows(image_folder, tiny_pair_dir, constant_classifier, tmp_path):
    label_map = tmp_path / "labels.json"
    label_map.write_text(json.dumps({"a": 0, "b": 1}))
    out = tmp_path / "cert"
    base = _command(image_folder, constant_classifier, tiny_pair_dir / "denoiser", out, label_map, "--no-figures")
    assert main(base + ["--limit", "3"]) == 0
    first = (out / "certify.tsv").read_text().splitlines()
    assert len(first) == 4
    with open(out / "certify.tsv", "a") as handle:  # a row cut off by a kill
        handle.write("5\t1\t3\t0.33")
    assert main(base + ["--limit", "6"]) == 0
    lines = (out / "certify.tsv").read_text().splitlines()
    assert len(lines) == 7 and len({line.split("\t")[8] for line in lines[1:]}) == 6
    assert set(first[1:]) <= set(lines[1:])  # the first run's rows, times included, are kept as written
    assert all(line.endswith("\t-\t-\t-\t-") for line in lines[1:])  # no certificate check asked for
    assert [int(line.split("\t")[0]) for line in lines[1:]] == sorted(int(line.split("\t")[0]) for line in lines[1:])
