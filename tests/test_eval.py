"""fvit eval: the grid, reuse of attacks, row fields, resume after kill -9, summary statistics,
perturbation-test AUC."""

from __future__ import annotations

import json
import math
import multiprocessing
import signal

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import EVAL_TEST_ROWS, eval_command, killed_after_rows, read_rows

from fvit_core.metrics import MAP_METRICS
from fvit_core.batch import evaluate as ev
from fvit_core.batch.grid import settings_grid
from fvit_core.explanations.perturbation_test import (FRACTIONS, perturbation_auc, perturbed_batch, removal_counts,
                                          remove_patches, split_hits)
from fvit_core.batch.store import AppendLog, complete_lines
from fvit_core.batch.summary import Metric, mean_ci, summarise, to_csv, wilson_ci
from fvit_core.cli.main import main

REQUIRED_FIELDS = {"image", "label", "mode", "attack", "eps", "sigma", "method", "k", "pred_clean", "pred_attacked",
                   "topk_overlap", "divergence", "topk_overlap_floor", "topk_overlap_vanilla",
                   "correct_clean", "correct_attacked", "label_flip", "pt_auc_positive", "pt_auc_negative"}


# --------------------------------------------------------------------------------------------
# Grid and reuse
# --------------------------------------------------------------------------------------------


def test_grid_vanilla_once_per_budget_and_eot_per_sigma():
    cfg = ev.EvalConfig.of(data="d", out="o", attacks=("pgd", "eot_dds", "cw"), eps=(2 / 255, 8 / 255),
                        sigmas=(0.12, 0.25), modes=("vanilla", "dds"), methods=("raw",))
    grid = settings_grid(cfg.grid)
    pgd = [s for s in grid if s.attack == "pgd"]
    assert len(pgd) == 2 * (1 + 2)  # per budget: vanilla once, dds per sigma
    assert len([s for s in grid if s.attack == "eot_dds" and s.mode == "vanilla"]) == 2 * 2  # attack depends on sigma
    assert {s.eps for s in grid if s.attack == "cw"} == {None}  # minimum-norm attack: no budget
    # The attacked image is shared across sigma / mode / method, except for eot_dds (sigma) and topk (method).
    a = ev.Setting("pgd", 8 / 255, "dds", 0.12, "raw")

    def key(point):  # what the attacked image depends on: the seed parts of the resolved attack
        return cfg.resolved_attack(point).seed_parts

    assert key(a) == key(ev.Setting("pgd", 8 / 255, "vanilla", None, "rollout"))
    assert key(ev.Setting("eot_dds", 8 / 255, "dds", 0.12, "raw")) != key(
        ev.Setting("eot_dds", 8 / 255, "dds", 0.25, "raw"))
    assert key(ev.Setting("topk", 8 / 255, "dds", 0.12, "raw")) != key(
        ev.Setting("topk", 8 / 255, "dds", 0.12, "rollout"))
    params = cfg.resolved_attack(ev.Setting("eot_dds", 4 / 255, "dds", 0.12, "raw")).params
    assert params["sigma"] == 0.12 and params["alpha"] == pytest.approx(4 / 255 / 5)


def test_attack_computed_once_per_budget_and_reused(image_folder, tiny_pair_dir, tmp_path, monkeypatch):
    calls = []
    real = ev.run_attack

    def counting(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ev, "run_attack", counting)
    cfg = ev.EvalConfig.of(data=str(image_folder), out=str(tmp_path / "o"), classifier=str(tiny_pair_dir / "classifier"),
                        denoiser=str(tiny_pair_dir / "denoiser"), limit=1, eps=(2 / 255, 8 / 255), sigmas=(0.12, 0.25),
                        modes=("vanilla", "dds", "rs"), methods=("raw",), n_samples=4, pt_samples=2, k=4,
                        steps=2, progress=False, figures=False)
    report = ev.run_eval(cfg)
    assert report.rows_total == 2 * (1 + 2 * 2) and report.rows_missing == 0
    assert calls == ["pgd", "pgd"]  # one attack per budget, shared by its 5 settings
    rows = [json.loads(line) for line in (tmp_path / "o" / "rows.jsonl").read_text().splitlines()]
    # The noise floor and the explanation agreement come from the clean estimate, shared across budgets.
    for mode in ("dds", "rs"):
        floors = {(r["sigma"], r["method"]): set() for r in rows if r["mode"] == mode}
        for r in rows:
            if r["mode"] == mode:
                floors[(r["sigma"], r["method"])].add((r["topk_overlap_floor"], r["pt_auc_positive"]))
        assert all(len(values) == 1 for values in floors.values())


def test_rows_have_documented_fields(eval_reference):
    out, rows = eval_reference
    assert len(rows) == EVAL_TEST_ROWS
    for row in rows:
        assert REQUIRED_FIELDS <= set(row)
        assert 0.0 <= row["topk_overlap"] <= 1.0
        assert set(row["divergence"]) == {"kl", "js", "tv", "hellinger", "renyi"}
        assert 0.0 <= row["pt_auc_positive"] <= 0.8 + 1e-12 and len(row["pt_positive"]) == len(FRACTIONS)
        assert row["label_flip"] == (row["pred_clean"] != row["pred_attacked"])
        assert row["perturbation_linf"] <= row["eps"] + 1e-6
        if row["mode"] == "vanilla":
            assert row["sigma"] is None and row["topk_overlap_floor"] is None and row["n_samples"] is None
            assert row["map_metrics_floor"] is None
        else:
            assert row["n_samples"] == 8 and 0.0 <= row["topk_overlap_floor"] <= 1.0
            assert list(row["map_metrics_floor"]) == list(MAP_METRICS)
        assert list(row["map_metrics"]) == list(MAP_METRICS) and row["sensitivity"] is None
        values = row["map_metrics"]
        assert 0.0 <= values["topk_mass"] <= 1.0 and values["centroid_shift"] >= 0.0
        assert all(values[name] is None or -1.0 <= values[name] <= 1.0 for name in ("spearman", "kendall", "pearson"))
    raw = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert all(r["seconds"] > 0 for r in raw)
    assert {"summary.csv", "summary.md", "summary.json", "overlap_vs_eps.png", "overlap_vs_sigma.png",
            "run_info.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 12 and all(s["n"] == 6 for s in summary)
    for record in summary:
        assert record["spearman"]["n"] > 0 and record["sensitivity_max"]["n"] == 0
        assert (record["spearman_floor"]["n"] > 0) == (record["mode"] != "vanilla")
    assert "Spearman floor" in (out / "summary.md").read_text()


def test_sensitivity_rows_and_summary(image_folder, tiny_pair_dir, tmp_path):
    from fvit_core.cli.main import main

    out = tmp_path / "sens"
    command = ["eval", "--data", str(image_folder), "--out", str(out), "--classifier", str(tiny_pair_dir / "classifier"),
               "--denoiser", str(tiny_pair_dir / "denoiser"), "--limit", "1", "--eps", "8/255", "--mode", "vanilla,dds",
               "--method", "raw", "--n-samples", "4", "--k", "4", "--steps", "2", "--no-progress", "--no-figures",
               "--no-perturbation-test", "--sensitivity-samples", "2", "--sensitivity-radius", "0.05"]
    assert main(command) == 0
    rows = {row["mode"]: row for row in read_rows(out)}
    vanilla, dds = rows["vanilla"]["sensitivity"], rows["dds"]["sensitivity"]
    assert 0 < vanilla["mean"] <= vanilla["max"] and vanilla["floor"] is None
    assert 0 < dds["mean"] <= dds["max"] and dds["floor"] > 0
    summary = {r["mode"]: r for r in json.loads((out / "summary.json").read_text())}
    assert summary["dds"]["sensitivity_max"]["mean"] == pytest.approx(dds["max"])


def test_same_command_twice_adds_nothing_and_other_settings_are_refused(eval_reference, image_folder, tiny_pair_dir,
                                                                        capsys):
    out, rows = eval_reference
    assert main(eval_command(image_folder, tiny_pair_dir, out) + ["--no-figures"]) == 0
    assert read_rows(out) == rows
    assert main(eval_command(image_folder, tiny_pair_dir, out) + ["--n-samples", "16"]) == 2
    assert "n_samples 8 -> 16" in capsys.readouterr().err



def test_a_folder_from_before_a_new_setting_resumes_with_its_default(eval_reference, image_folder, tiny_pair_dir,
                                                                     tmp_path, capsys):
    import shutil

    source, rows = eval_reference
    out = tmp_path / "older"
    shutil.copytree(source, out)
    stored = json.loads((out / "eval_config.json").read_text())
    for name in ("sensitivity_samples", "sensitivity_radius", "sensitivity_norm"):
        del stored[name]  # as written before the setting existed
    (out / "eval_config.json").write_text(json.dumps(stored))
    assert main(eval_command(image_folder, tiny_pair_dir, out) + ["--no-figures"]) == 0
    assert read_rows(out) == rows
    (out / "eval_config.json").write_text(json.dumps(stored))
    assert main(eval_command(image_folder, tiny_pair_dir, out) + ["--sensitivity-samples", "2"]) == 2
    assert "sensitivity_samples 0 -> 2" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Resume after kill -9
# --------------------------------------------------------------------------------------------


def test_killed_run_resumes_without_losing_or_repeating_rows(eval_reference, image_folder, tiny_pair_dir, tmp_path):
    _, reference = eval_reference
    out = tmp_path / "killed"
    rows_file = out / "rows.jsonl"
    # A forked child runs the command (it inherits the imported modules: no start-up cost) and is
    # killed at a fixed point, whatever the machine's speed.
    command = eval_command(image_folder, tiny_pair_dir, out) + ["--no-figures"]
    proc = multiprocessing.get_context("fork").Process(target=killed_after_rows, args=(command, 10))
    proc.start()
    proc.join(240)
    assert proc.exitcode == -signal.SIGKILL
    assert len(complete_lines(rows_file)) == 10
    with open(rows_file, "ab") as handle:  # what a kill in the middle of a write would leave
        handle.write(b'{"image":"a/0.png","index":0,"lab')
    assert main(command) == 0
    resumed = read_rows(out)
    keys = [ev.key_of_row(r) for r in resumed]
    assert len(keys) == len(set(keys)) == EVAL_TEST_ROWS
    assert resumed == reference  # same keys, same order, identical values (timing aside)


def test_append_log_cuts_partial_line_and_reads_complete_ones(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_bytes(b"h\n1\n2\n3-partial")
    assert complete_lines(path) == ["h", "1", "2"]
    with AppendLog(path, header="h") as log:
        log.append("4")
    assert path.read_bytes() == b"h\n1\n2\n4\n"
    with pytest.raises(ValueError, match="one line"):
        with AppendLog(tmp_path / "x") as log:
            log.append("a\nb")


# --------------------------------------------------------------------------------------------
# Summary statistics
# --------------------------------------------------------------------------------------------


def test_mean_ci_is_the_student_t_interval():
    values = [0.25, 0.5, 0.875, 0.625, 0.75, 1.0, 0.125]
    x = np.array(values)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    est = mean_ci(values + [None])  # missing values are left out
    assert est.n == 7
    assert est.mean == pytest.approx(x.mean(), abs=1e-15)
    assert (est.low, est.high) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-12)
    assert half == pytest.approx(0.2964, abs=1e-4)  # t(0.975, 6) = 2.4469, s = 0.32044
    single = mean_ci([0.3])
    assert (single.low, single.mean, single.high) == (0.3, 0.3, 0.3)
    assert mean_ci([None]).n == 0 and math.isnan(mean_ci([]).mean)


def test_wilson_ci_matches_the_formula_and_stays_in_unit_interval():
    outcomes = [1] * 7 + [0] * 3
    z = stats.norm.ppf(0.975)
    n, p = 10, 0.7
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    est = wilson_ci(outcomes)
    assert (est.mean, est.low, est.high) == pytest.approx((0.7, centre - half, centre + half), abs=1e-12)
    assert (est.low, est.high) == pytest.approx((0.3968, 0.8922), abs=1e-4)  # published Wilson bounds for 7/10
    zero = wilson_ci([False] * 6)
    assert zero.low == 0.0 and zero.high == pytest.approx(z**2 / (6 + z**2), abs=1e-12)
    with pytest.raises(ValueError):
        wilson_ci([0.5])


def test_summarise_groups_rows_and_writes_csv():
    rows = [{"mode": m, "v": v, "ok": ok} for m, v, ok in
            [("dds", 0.5, 1), ("dds", 1.0, 1), ("dds", 0.75, 0), ("vanilla", 0.25, 0), ("vanilla", 0.5, 0)]]
    metrics = [Metric("v", lambda r: r["v"], "mean", "V"), Metric("acc", lambda r: r["ok"], "rate", "acc")]
    records = summarise(rows, ["mode"], metrics)
    assert [r["mode"] for r in records] == ["dds", "vanilla"] and [r["n"] for r in records] == [3, 2]
    assert records[0]["v"].mean == pytest.approx(0.75) and records[0]["acc"].mean == pytest.approx(2 / 3)
    lines = to_csv(records, ["mode"], metrics).splitlines()
    assert lines[0] == "mode,n,v_mean,v_lo,v_hi,v_n,acc_mean,acc_lo,acc_hi,acc_n"
    assert float(lines[2].split(",")[2]) == pytest.approx(0.375)


# --------------------------------------------------------------------------------------------
# Perturbation test
# --------------------------------------------------------------------------------------------


def test_perturbation_auc_on_a_constructed_case():
    """A 'model' that is right exactly while patch 4 is intact, an explanation ranking patch j
    above patch j+1 (P = 16 patches of 8x8 on a 32x32 image of ones, removed to 0)."""
    grid = (4, 4)
    image = torch.ones(3, 32, 32)
    attention = np.arange(16, 0, -1, dtype=np.float64)
    assert removal_counts(16) == [2, 3, 5, 6, 8, 10, 11, 13, 14]
    batch = perturbed_batch(image, attention, grid, fill="zero")
    assert batch.shape == (18, 3, 32, 32)
    patch4 = (slice(None), slice(8, 16), slice(0, 8))  # row 1, column 0
    predictions = [3 if bool((img[patch4] == 1).all()) else 5 for img in batch]
    positive, negative = split_hits(predictions, label=3)
    # Positive test removes patches 0,1,.. : patch 4 goes at the third fraction (5 removed).
    assert positive == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    # Negative test removes 15,14,..: patch 4 goes once 12 are removed (fractions 0.8, 0.9).
    assert negative == [1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert perturbation_auc(positive) == pytest.approx(0.1 + 0.05)
    assert perturbation_auc(negative) == pytest.approx(0.6 + 0.05)
    assert perturbation_auc([1] * 9) == pytest.approx(0.8)


def test_remove_patches_fills_with_the_image_mean():
    image = torch.zeros(3, 32, 32)
    image[0] = 0.5
    image[1, :16] = 1.0  # channel means 0.5, 0.5, 0
    out = remove_patches(image, [15], (4, 4), "mean")
    assert torch.equal(out[:, :24], image[:, :24])
    assert torch.allclose(out[:, 24:, 24:], torch.tensor([0.5, 0.5, 0.0]).view(3, 1, 1).expand(3, 8, 8))
    with pytest.raises(ValueError, match="fill"):
        remove_patches(image, [0], (4, 4), "blur")


def test_bad_grid_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        ev.EvalConfig.of(data="d", out="o", modes=("vanilla", "smooth"))
    with pytest.raises(ValueError, match="belong to none"):
        ev.EvalConfig.of(data="d", out="o", attack_params={"n_queries": 10})
    with pytest.raises(ValueError, match="eps"):
        ev.EvalConfig.of(data="d", out="o", eps=(-1.0,))
    with pytest.raises(ValueError, match="precision"):
        ev.EvalConfig.of(data="d", out="o", precision="float16")
    from fvit_core.batch.config import CertifyConfig

    with pytest.raises(ValueError, match="precision"):
        CertifyConfig.of(data="d", out="o", precision="half")
    ev.EvalConfig.of(data="d", out="o", precision="bfloat16")
    CertifyConfig.of(data="d", out="o", precision="float32")


def test_folders_from_before_the_shared_protocol_are_refused_with_a_reason(tmp_path):
    """Rows seeded from the image path (no seed_protocol), made with the independent floor (no
    noise_floor_estimator: it was the only one) or with independent draws (no sampling) cannot be
    resumed with today's defaults."""
    cfg = ev.EvalConfig.of(data="d", out=str(tmp_path))
    (tmp_path / "rows.jsonl").write_text("")
    stored = {**cfg.to_dict(), "n_samples": 64}
    del stored["noise_floor_estimator"], stored["sampling"]
    (tmp_path / ev.CONFIG_FILE).write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="seeded by an earlier protocol"):
        ev.check_output_folder(cfg, ev.CONFIG_FILE, ev.eval_row_files(tmp_path))
    (tmp_path / ev.CONFIG_FILE).write_text(json.dumps({**stored, "seed_protocol": ev.SEED_PROTOCOL}))
    with pytest.raises(ValueError, match="sampling 'independent' -> 'antithetic'") as refused:
        ev.check_output_folder(cfg, ev.CONFIG_FILE, ev.eval_row_files(tmp_path))
    assert "n_samples 64 -> 32" in str(refused.value)
    assert "noise_floor_estimator" not in str(refused.value)  # independent again the default since issue 25
    # A folder made with the bootstrap floor (the default before issue 25) resumes only with it.
    (tmp_path / ev.CONFIG_FILE).write_text(json.dumps({**stored, "seed_protocol": ev.SEED_PROTOCOL,
                                                       "noise_floor_estimator": "bootstrap"}))
    with pytest.raises(ValueError, match="noise_floor_estimator 'bootstrap' -> 'independent'"):
        ev.check_output_folder(cfg, ev.CONFIG_FILE, ev.eval_row_files(tmp_path))
    (tmp_path / ev.CONFIG_FILE).write_text(json.dumps({**stored, "seed_protocol": ev.SEED_PROTOCOL}))
    cfg = cfg.replace(noise_floor_estimator="independent", sampling="independent", n_samples=64)
    ev.check_output_folder(cfg, ev.CONFIG_FILE, ev.eval_row_files(tmp_path))  # resumes with what it used


def test_shared_settings_are_checked_alike(tmp_path):
    """One rule per shared setting (each concept's settings object) in analyze, eval and certify,
    types included, checked when the settings are made."""
    from fvit_core.analysis.config import AnalysisConfig
    from fvit_core.batch.config import CertifyConfig

    for bad, message in (({"method": "nope"}, "unknown explanation method 'nope'"),
                         ({"head_fusion": "x"}, "unknown head fusion"), ({"precision": "float16"}, "unknown precision"),
                         ({"k": 0}, "k must be")):
        with pytest.raises(ValueError, match=message):
            AnalysisConfig.of(**bad)
        with pytest.raises(ValueError, match=message):
            CertifyConfig.of(data="d", out="o", **bad)
        eval_bad = {"methods": (bad["method"],)} if "method" in bad else bad
        with pytest.raises(ValueError, match=message):
            ev.EvalConfig.of(data="d", out="o", **eval_bad)
    with pytest.raises(ValueError, match="unknown noise floor estimator 'jackknife'"):
        ev.EvalConfig.of(data="d", out="o", noise_floor_estimator="jackknife")
    with pytest.raises(ValueError, match="eps must be a number"):
        ev.EvalConfig.of(data="d", out="o", eps=("8/255",))
    with pytest.raises(ValueError, match="sigma must be a number"):
        CertifyConfig.of(data="d", out="o", sigma="0.25")
    with pytest.raises(ValueError, match="eps must be a number"):
        AnalysisConfig.of(eps="8/255")
