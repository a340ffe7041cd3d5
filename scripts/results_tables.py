"""Condensed Markdown tables for docs/RESULTS.md from the summaries of scripts/results_runs.sh.

    python scripts/results_tables.py [runs/results]

Reads <dir>/main/summary.csv and <dir>/sigma/summary.csv (written by `fvit eval`) and prints the
headline tables: V_k by attack budget, accuracy by budget, the perturbation test and
divergences at 8/255, and the sigma trade-off. Every cell is a mean (or rate) over images with
its 95% confidence interval, as in the summaries.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

EPS = ("2/255", "4/255", "8/255", "16/255")
MODES = ("vanilla", "rs", "dds")
METHODS = ("raw", "rollout", "grad_rollout")


def load(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def eps_name(value: str) -> str:
    scaled = float(value) * 255
    return f"{round(scaled)}/255"


def cell(row: dict | None, metric: str, digits: int = 3) -> str:
    if row is None or not row.get(f"{metric}_mean"):
        return "n/a"
    mean, lo, hi = (float(row[f"{metric}_{part}"]) for part in ("mean", "lo", "hi"))
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def find(rows: list[dict], **want: str) -> dict | None:
    for row in rows:
        if all((eps_name(row["eps"]) if key == "eps" else row[key]) == value for key, value in want.items()):
            return row
    return None


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def main(root: Path) -> None:
    main_rows = load(root / "main" / "summary.csv")
    n = main_rows[0]["n"]
    print(f"### Top-k overlap V_8 under PGD ({n} images)\n")
    body = []
    for method in METHODS:
        for mode in MODES:
            rows = [find(main_rows, eps=e, mode=mode, method=method) for e in EPS]
            floor = cell(rows[0], "topk_overlap_floor") if mode != "vanilla" else "-"
            body.append([method, mode, *(cell(r, "topk_overlap") for r in rows), floor])
    print(table(["method", "mode", *EPS, "noise floor"], body))
    print(f"\n### Accuracy clean and under attack, label flips ({n} images, raw attention's run)\n")
    body = []
    for mode in MODES:
        rows = [find(main_rows, eps=e, mode=mode, method="raw") for e in EPS]
        body.append([mode, cell(rows[0], "clean_accuracy"), *(cell(r, "attacked_accuracy") for r in rows),
                     cell(rows[2], "label_flip_rate")])
    print(table(["mode", "clean", *(f"under {e}" for e in EPS), "label flips at 8/255"], body))
    print(f"\n### Explanation preservation and the perturbation test (clean images, {n} images)\n")
    body = []
    for method in METHODS:
        for mode in MODES:
            row = find(main_rows, eps="8/255", mode=mode, method=method)
            body.append([method, mode, cell(row, "topk_overlap_vanilla") if mode != "vanilla" else "-",
                         cell(row, "pt_auc_positive"), cell(row, "pt_auc_negative")])
    print(table(["method", "mode", "V_8 vanilla vs smoothed (clean)", "PT AUC positive (lower better)",
                 "PT AUC negative (higher better)"], body))
    print(f"\n### Prediction divergences clean vs attacked at PGD 8/255 (nats; {n} images, raw)\n")
    body = []
    for mode in MODES:
        row = find(main_rows, eps="8/255", mode=mode, method="raw")
        body.append([mode, *(cell(row, m) for m in ("kl", "js", "tv", "hellinger", "renyi"))])
    print(table(["mode", "KL", "JS", "TV", "Hellinger", "Renyi (2)"], body))
    sigma_path = root / "sigma" / "summary.csv"
    if sigma_path.exists():
        rows = load(sigma_path)
        print(f"\n### The sigma trade-off (PGD 8/255, raw attention, {rows[0]['n']} images)\n")
        body = []
        vanilla = find(rows, mode="vanilla", method="raw")
        body.append(["vanilla", "-", cell(vanilla, "topk_overlap"), "-", cell(vanilla, "clean_accuracy"),
                     cell(vanilla, "attacked_accuracy"), cell(vanilla, "label_flip_rate")])
        for row in sorted((r for r in rows if r["mode"] == "dds"), key=lambda r: float(r["sigma"])):
            body.append(["dds", f"{float(row['sigma']):g}", cell(row, "topk_overlap"), cell(row, "topk_overlap_floor"),
                         cell(row, "clean_accuracy"), cell(row, "attacked_accuracy"), cell(row, "label_flip_rate")])
        print(table(["mode", "sigma", "V_8 clean/attacked", "noise floor", "clean acc.", "acc. under attack",
                     "label flips"], body))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/results"))
