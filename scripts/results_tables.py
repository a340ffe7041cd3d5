"""Condensed Markdown tables for docs/RESULTS.md from the summaries of scripts/results_runs.sh.

    python scripts/results_tables.py [runs/results]

Reads <dir>/main/summary.csv, <dir>/sigma/summary.csv and <dir>/maps/summary.csv (written by
`fvit eval`) and prints the headline tables: V_k by attack budget, accuracy by budget, the
perturbation test and divergences at 8/255, the sigma trade-off, and (run 6) the LRP baselines
with the map metrics, their noise floors and the neighbourhood sensitivity. Every cell is a mean (or rate) over images with
its 95% confidence interval, as in the summaries.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

EPS = ("2/255", "4/255", "8/255", "16/255")
MODES = ("vanilla", "rs", "dds")
METHODS = ("raw", "rollout", "grad_rollout")
ALL_METHODS = (*METHODS, "transformer_attribution", "lrp", "partial_lrp")
# docs/METRICS.md; True where higher means more alike (centroid shift: lower)
MAP_METRICS = {"topk_overlap": True, "spearman": True, "kendall": True, "pearson": True, "ssim": True,
               "centroid_shift": False, "topk_mass": True}
MAP_HEADINGS = {"topk_overlap": "V_8", "spearman": "Spearman", "kendall": "Kendall", "pearson": "Pearson",
                "ssim": "SSIM", "centroid_shift": "centroid shift", "topk_mass": "top-8 mass"}


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


def interval(row: dict | None, metric: str) -> tuple[float, float] | None:
    if row is None or not row.get(f"{metric}_mean"):
        return None
    return float(row[f"{metric}_lo"]), float(row[f"{metric}_hi"])


def separation(vanilla: dict | None, smoothed: dict | None, metric: str, higher_is_steadier: bool) -> str:
    """How the smoothed model's clean-vs-attacked value compares, by disjoint 95% intervals, with
    the vanilla ViT's (steadier / same / less steady) and with its own noise floor (at floor /
    beyond floor: the attack's effect is (not) distinguishable from Monte Carlo noise)."""
    v, d = interval(vanilla, metric), interval(smoothed, metric)
    floor = interval(smoothed, "topk_overlap_floor" if metric == "topk_overlap" else f"{metric}_floor")
    if v is None or d is None:
        return "n/a"
    if (d[0] > v[1]) if higher_is_steadier else (d[1] < v[0]):
        versus = "steadier"
    elif (d[1] < v[0]) if higher_is_steadier else (d[0] > v[1]):
        versus = "less steady"
    else:
        versus = "same"
    if floor is None:
        return versus
    beyond = (d[1] < floor[0]) if higher_is_steadier else (d[0] > floor[1])
    return f"{versus}, {'beyond' if beyond else 'at'} floor"


def overlap_table(rows: list[dict], methods, eps_list, modes) -> str:
    """V_8 (clean vs attacked) for every method and mode by budget, the smoothed modes' noise floor last."""
    body = []
    for method in methods:
        for mode in modes:
            found = [find(rows, eps=e, mode=mode, method=method) for e in eps_list]
            floor = cell(found[0], "topk_overlap_floor") if mode != "vanilla" else "-"
            body.append([method, mode, *(cell(r, "topk_overlap") for r in found), floor])
    return table(["method", "mode", *eps_list, "noise floor"], body)


def maps_tables(rows: list[dict]) -> None:
    """The LRP baselines and the map metrics (run 6 of scripts/results_runs.sh), for the budgets
    and modes the run has."""
    n = rows[0]["n"]
    eps_list = [e for e in EPS if any(eps_name(r["eps"]) == e for r in rows)]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    print(f"### Top-k overlap V_8 under PGD, every method ({n} images)\n")
    print(overlap_table(rows, ALL_METHODS, eps_list, modes))
    print(f"\n### Map metrics clean vs attacked at PGD 8/255, with the smoothed models' noise floors ({n} images)\n")
    body = []
    for method in ALL_METHODS:
        for mode in modes:
            row = find(rows, eps="8/255", mode=mode, method=method)
            cells = []
            for metric in list(MAP_METRICS)[1:]:
                value = cell(row, metric, 2)
                cells.append(value if mode == "vanilla" else f"{value}<br>floor {cell(row, f'{metric}_floor', 2)}")
            body.append([method, mode, *cells])
    print(table(["method", "mode", *(MAP_HEADINGS[m] for m in list(MAP_METRICS)[1:])], body))
    print(f"\n### Which metrics separate DDS from the vanilla ViT at PGD 8/255 ({n} images)\n")
    print("DDS against vanilla by disjoint 95% intervals (steadier / same / less steady), and DDS's "
          "clean-vs-attacked value against its own noise floor (beyond floor: the attack's effect exceeds "
          "Monte Carlo noise; at floor: it does not).\n")
    body = []
    for metric, higher in MAP_METRICS.items():
        body.append([MAP_HEADINGS[metric], *(separation(find(rows, eps="8/255", mode="vanilla", method=m),
                                                        find(rows, eps="8/255", mode="dds", method=m), metric, higher)
                                             for m in ALL_METHODS)])
    print(table(["metric", *ALL_METHODS], body))
    if any(r.get("sensitivity_max_mean") for r in rows):
        print(f"\n### Neighbourhood sensitivity of the clean explanation ({n} images)\n")
        body = []
        for method in ALL_METHODS:
            for mode in modes:
                row = find(rows, eps="8/255", mode=mode, method=method)
                body.append([method, mode, cell(row, "sensitivity_max"), cell(row, "sensitivity_mean"),
                             cell(row, "sensitivity_floor") if mode != "vanilla" else "-"])
        print(table(["method", "mode", "max-sensitivity", "avg-sensitivity", "floor (two clean estimates)"], body))


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def main(root: Path) -> None:
    if (root / "main" / "summary.csv").exists():
        main_tables(root)
    sigma_and_maps(root)


def main_tables(root: Path) -> None:
    main_rows = load(root / "main" / "summary.csv")
    n = main_rows[0]["n"]
    print(f"### Top-k overlap V_8 under PGD ({n} images)\n")
    print(overlap_table(main_rows, METHODS, EPS, MODES))
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


def sigma_and_maps(root: Path) -> None:
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
    maps_path = root / "maps" / "summary.csv"
    if maps_path.exists():
        print()
        maps_tables(load(maps_path))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/results"))
