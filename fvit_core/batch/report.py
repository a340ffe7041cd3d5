"""What rank 0 writes at the end of a batch run: merged rows, summary tables, figures, run info.

Everything is written atomically (temporary file + os.replace), so an interrupted summary never
leaves a half-written table; rerunning the same command (all rows done) writes it again.
The summary covers the rows of the current command's grid and image selection; rows of
earlier, different grids stay in the merged row file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from fvit_core.batch.grid import EVAL_GROUP, fmt_eps, fmt_sigma, group_order, key_of_row
from fvit_core.batch.store import RowFiles
from fvit_core.batch.summary import Estimate, Metric, summarise, to_csv, to_markdown
from fvit_core.data.files import atomic_write_text
from fvit_core.metrics import MAP_METRICS
from fvit_core.analysis.noise_floor import floor_description
from fvit_core.runtime import distributed


def _div(name: str):
    return lambda row: (row.get("divergence") or {}).get(name)


def _field(group: str, name: str):
    """row[group][name], None when the row lacks the group (older rows, metric switched off)."""
    return lambda row: (row.get(group) or {}).get(name)


_MAP_HEADINGS = {"spearman": "Spearman", "kendall": "Kendall", "pearson": "Pearson", "ssim": "SSIM",
                 "centroid_shift": "centroid shift (patches)", "topk_mass": "top-k mass"}
# Map metrics (attacked vs clean) and the FViT's floor (second clean estimate vs clean), then
# the neighbourhood sensitivity (docs/METRICS.md).
MAP_SUMMARY_METRICS: tuple[Metric, ...] = tuple(
    metric for name in MAP_METRICS for metric in (
        Metric(name, _field("map_metrics", name), "mean", _MAP_HEADINGS[name]),
        Metric(f"{name}_floor", _field("map_metrics_floor", name), "mean", f"{_MAP_HEADINGS[name]} floor"),
    )
) + (
    Metric("sensitivity_max", _field("sensitivity", "max"), "mean", "max-sensitivity"),
    Metric("sensitivity_mean", _field("sensitivity", "mean"), "mean", "avg-sensitivity"),
    Metric("sensitivity_floor", _field("sensitivity", "floor"), "mean", "sensitivity floor"),
)


_SEGMENTATION_HEADINGS = {"pixel_accuracy": "pixel acc.", "miou": "mIoU", "map": "mAP"}
# The segmentation test (docs/METRICS.md): the clean and the attacked explanation against the
# clean image's mask, pooled over images.
SEGMENTATION_SUMMARY_METRICS: tuple[Metric, ...] = tuple(
    Metric(f"seg_{name}_{phase}", _field("segmentation", phase), f"pooled:{name}", f"{heading} {phase}")
    for name, heading in _SEGMENTATION_HEADINGS.items() for phase in ("clean", "attacked")
)


EVAL_METRICS: tuple[Metric, ...] = (
    Metric("topk_overlap", lambda r: r["topk_overlap"], "mean", "V_k clean/attacked"),
    Metric("topk_overlap_floor", lambda r: r["topk_overlap_floor"], "mean", "noise floor"),
    Metric("topk_overlap_vanilla", lambda r: r["topk_overlap_vanilla"], "mean", "V_k vanilla/FViT (clean)"),
    Metric("clean_accuracy", lambda r: r["correct_clean"], "rate", "clean acc."),
    Metric("attacked_accuracy", lambda r: r["correct_attacked"], "rate", "acc. under attack"),
    Metric("label_flip_rate", lambda r: r["label_flip"], "rate", "label flips"),
    Metric("pt_auc_positive", lambda r: r["pt_auc_positive"], "mean", "pert. AUC pos. (lower better)"),
    Metric("pt_auc_negative", lambda r: r["pt_auc_negative"], "mean", "pert. AUC neg. (higher better)"),
    Metric("kl", _div("kl"), "mean", "KL"),
    Metric("js", _div("js"), "mean", "JS"),
    Metric("tv", _div("tv"), "mean", "TV"),
    Metric("hellinger", _div("hellinger"), "mean", "Hellinger"),
    Metric("renyi", _div("renyi"), "mean", "Renyi"),
    Metric("topk_radius", lambda r: r["topk_radius"], "mean", "top-k radius (L2)"),
    Metric("seconds", lambda r: r["seconds"], "mean", "s / image"),
    *MAP_SUMMARY_METRICS,
    *SEGMENTATION_SUMMARY_METRICS,
)
_MAIN_TABLE = ("topk_overlap", "topk_overlap_floor", "topk_overlap_vanilla", "clean_accuracy", "attacked_accuracy",
               "label_flip_rate", "seconds")
_SECOND_TABLE = ("pt_auc_positive", "pt_auc_negative", "kl", "js", "tv", "hellinger", "renyi", "topk_radius")
_MAP_TABLE = tuple(m.name for m in MAP_SUMMARY_METRICS[:2 * len(MAP_METRICS)])
_SENSITIVITY_TABLE = ("sensitivity_max", "sensitivity_mean", "sensitivity_floor")
_SEGMENTATION_TABLE = tuple(m.name for m in SEGMENTATION_SUMMARY_METRICS)


def hardware() -> dict[str, Any]:
    """Where the numbers were measured."""
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _estimate_json(value: Any) -> Any:
    if isinstance(value, Estimate):
        clean = (lambda x: None if isinstance(x, float) and math.isnan(x) else x)
        return {"mean": clean(value.mean), "low": clean(value.low), "high": clean(value.high), "n": value.n}
    return value


def eval_markdown(records: list[dict], k: int, floor_estimator: str = "independent") -> str:
    by_name = {m.name: m for m in EVAL_METRICS}
    columns = [("attack", lambda r: r["attack"]), ("eps", lambda r: fmt_eps(r["eps"])), ("mode", lambda r: r["mode"]),
               ("sigma", lambda r: fmt_sigma(r["sigma"])), ("method", lambda r: r["method"]), ("n", lambda r: str(r["n"]))]
    return "\n".join([
        f"# Evaluation summary\n\nMeans with 95% confidence intervals over images (Student t for means, Wilson for "
        f"rates). V_k: top-{k} overlap of the clean and attacked explanations; noise floor: V_k of "
        f"{floor_description(floor_estimator)}; perturbation-test AUCs by the trapezoid rule over removal fractions 0.1..0.9 (range 0..0.8).\n",
        "## Explanation stability, accuracy, cost\n",
        to_markdown(records, columns, [by_name[n] for n in _MAIN_TABLE]),
        "## Perturbation test, prediction divergences (nats), certified top-k radius\n",
        to_markdown(records, columns, [by_name[n] for n in _SECOND_TABLE]),
        f"## Map metrics, attacked vs clean, with the noise floor ({floor_description(floor_estimator)}; "
        "docs/METRICS.md)\n",
        to_markdown(records, columns, [by_name[n] for n in _MAP_TABLE]),
        "## Neighbourhood sensitivity of the clean explanation (relative L2 change; n/a when off)\n",
        to_markdown(records, columns, [by_name[n] for n in _SENSITIVITY_TABLE]),
        *(segmentation_markdown(records, columns) if any(r["seg_map_clean"].n for r in records) else []),
    ])


def segmentation_markdown(records: list[dict], columns) -> list[str]:
    """The segmentation test's section of the summary (only when the run had masks)."""
    by_name = {m.name: m for m in EVAL_METRICS}
    return [
        "## Segmentation test: explanation vs object mask (Chefer et al. 2021's protocol; docs/METRICS.md)\n\n"
        "Each map resized bilinearly to the classifier's input, min-max normalised, object where above its mean; the "
        "mask fitted to the same input by nearest neighbour. Clean: the clean image's explanation; attacked: the "
        "attacked image's explanation against the clean image's mask. Pixel accuracy and mIoU (mean over background "
        "and object) pool the pixels of all images, mAP is the mean of the per-image average precision; 95% intervals "
        "by the percentile bootstrap over images (2,000 resamples).\n",
        to_markdown(records, columns, [by_name[n] for n in _SEGMENTATION_TABLE]),
    ]


def finish_eval(cfg: Any, files: RowFiles, planned: set, ctx: distributed.DistContext,
                seconds: float, skipped: Sequence[dict] = ()) -> tuple[int, int]:
    """Merge the row files, write the summary (CSV, Markdown, JSON), figures and run info.

    ``skipped``: the images this run could not read ({"image", "reason"}), counted in the
    Markdown summary and listed in run_info.json. Returns (rows of this command's grid present,
    rows of it missing).
    """
    out, k = Path(cfg.batch.out), cfg.explanation.k
    rows, counts = files.merge()
    current = [row for row in rows if key_of_row(row) in planned]
    records = summarise(current, EVAL_GROUP, EVAL_METRICS, order=group_order)
    atomic_write_text(out / "summary.csv", to_csv(records, EVAL_GROUP, EVAL_METRICS))
    atomic_write_text(out / "summary.md", eval_markdown(records, k, cfg.floor.estimator) + skipped_markdown(skipped))
    atomic_write_text(out / "summary.json", json.dumps(
        [{key: _estimate_json(v) for key, v in r.items()} for r in records], indent=1) + "\n")
    if cfg.batch.figures:
        from fvit_core.batch.plots import overlap_vs_eps, overlap_vs_sigma

        overlap_vs_eps(records, out / "overlap_vs_eps.png", k=k)
        overlap_vs_sigma(records, out / "overlap_vs_sigma.png", k=k)
    missing = len(planned) - len(current)
    info = {"command": "eval", "rows": len(current), "rows_missing": missing, "rows_in_folder": len(rows),
            "world_size": ctx.world_size, "new_rows_by_file": counts, "wall_seconds_rank0": seconds,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "hardware": hardware(),
            "models": run_models(cfg), "device": cfg.models.device, "images_skipped": len(skipped), "skipped": list(skipped)}
    atomic_write_text(out / "run_info.json", json.dumps(info, indent=2) + "\n")
    return len(current), missing


def run_models(cfg: Any) -> dict:
    """The models of a run, for run_info.json."""
    models = cfg.models
    return {"pair": models.pair, "classifier": models.classifier, "denoiser": models.denoiser}


def skipped_markdown(skipped: Sequence[dict]) -> str:
    """The summary's note on unreadable images ('' when there were none)."""
    if not skipped:
        return ""
    lines = [f"\n## Skipped images\n\n{len(skipped)} image(s) could not be read and have no rows (run with "
             "--strict to stop at the first one instead):\n"]
    lines += [f"- `{entry['image']}`: {entry['reason']}" for entry in skipped]
    return "\n".join(lines) + "\n"
