"""``fvit certify``: Cohen et al.'s CERTIFY for every image, plus the top-k attention radius.

Per image x (docs/METHOD.md, section 5): n0 smoothed draws select the class c_A; n fresh draws
count its votes n_A and estimate the smoothed attention w~(x); c_A is certified within
R = sigma * Phi^-1(p_A_lower) (certify.certify_counts, abstaining when p_A_lower < 1/2), and the
top-k attention within certify.topk_certified_radius(w~(x), k, beta, sigma) (the Monte Carlo
error of w~ is not accounted for; see certify.py).

Output, as Cohen's certify.py: a tab-separated file ``certify.tsv`` with columns idx, label,
predict, radius, correct, time (predict -1 = abstain; time as h:mm:ss.ffffff), followed by our
columns topk_radius, topk_radius_linf, image and the optional certificate check (below). Appended as it goes and resumable like
``fvit eval`` (rows keyed by image); under torchrun each rank writes ``certify.rank<R>.tsv``
and rank 0 merges. At the end: certified accuracy vs radius (CSV, Markdown, figure) and the
top-k radius distribution.

Checking the top-k certificate (``check_random`` > 0 or ``check_attacks``): the radius is a
theorem about the exact smoothed attention, applied to a Monte Carlo estimate, so it is checked
empirically. For each image with a positive radius R, fresh estimates of w~(x') with
``check_samples`` draws (default n) are compared with w~(x) at points x' inside the radius:
``check_random`` uniformly random directions scaled to ||x' - x||_2 = R (then clipped to
[0, 1], which only shortens them), PGD-L2 on the vanilla ViT with budget R, and the top-k
explanation attack (METHOD.md section 6) with the Linf budget R / sqrt(3HW), whose L2 norm is
at most R. The columns give V_k(w~(x), w~(x')): the minimum over the random points, and per
attack; ``check_floor`` is V_k of two independent estimates at x itself (the Monte Carlo noise
floor at that sample count). The certificate promises V_k >= beta at every checked point.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fvit_core import metrics
from fvit_core.analysis.config import followed
from fvit_core.attacks.runner import run_attack
from fvit_core.attacks.settings import AttackSettings
from fvit_core.batch.config import CertifyConfig
from fvit_core.batch.evaluate import SkippedImages, progress_bar, selected_items, start_run
from fvit_core.batch.report import run_models, skipped_markdown
from fvit_core.batch.store import RowFiles
from fvit_core.data.files import atomic_write_text
from fvit_core.data.folders import ImageItem
from fvit_core.data.images import ImageError, image_digest, load_image, prepare_image
from fvit_core.errors import FViTError, InputError, SettingError
from fvit_core.method import certify
from fvit_core.method.denoise import check_schedule
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.models import ModelPair
from fvit_core.protocol.seeds import ImageSeeds, smoothing_parts
from fvit_core.runtime import distributed

CHECK_COLUMNS: tuple[str, ...] = ("check_floor", "check_random_min", "check_pgdl2", "check_topk")
COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "time", "topk_radius",
                            "topk_radius_linf", "image", *CHECK_COLUMNS)
NOT_RUN = "-"
HEADER = "\t".join(COLUMNS)
CONFIG_FILE = "certify_config.json"


def _encode(row: dict) -> str:
    return "\t".join(NOT_RUN if row.get(c) is None else str(row[c]) for c in COLUMNS)


def _decode(line: str) -> dict:
    values = line.split("\t")
    if len(values) != len(COLUMNS):
        raise InputError(f"expected {len(COLUMNS)} tab-separated columns, got {len(values)}")
    row = dict(zip(COLUMNS, values))
    for name in ("idx", "label", "predict", "correct"):
        row[name] = int(row[name])
    for name in ("radius", "topk_radius", "topk_radius_linf"):
        row[name] = float(row[name])
    for name in CHECK_COLUMNS:
        row[name] = None if row[name] == NOT_RUN else float(row[name])
    return row


def certify_row_files(out: str | Path) -> RowFiles:
    return RowFiles(out, "certify", "tsv", encode=_encode, decode=_decode, key=lambda r: r["image"],
                    sort_key=lambda r: r["idx"], header=HEADER)


def time_text(seconds: float) -> str:
    """Cohen's time column: str(datetime.timedelta), e.g. 0:00:01.234567."""
    return str(datetime.timedelta(seconds=seconds))


def time_seconds(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def faithful_vit(cfg: CertifyConfig, pair: ModelPair) -> FaithfulViT:
    """The FViT a certification run certifies."""
    return FaithfulViT.of(pair, cfg.smoothing, cfg.runtime)


def _parts(cfg: CertifyConfig) -> tuple:
    return smoothing_parts(cfg.smoothing.mode, cfg.smoothing.sigma, cfg.explanation.method)


def certify_image(cfg: CertifyConfig, pair: ModelPair, item: ImageItem, root: Path) -> dict:
    """One row: CERTIFY with n0 selection and n estimation draws, and the top-k radius."""
    start = time.perf_counter()
    c, e, sigma = cfg.certificate, cfg.explanation, cfg.smoothing.sigma
    decoded = load_image(root / item.path)
    image_seeds = ImageSeeds(cfg.seed, image_digest(decoded))  # protocol/seeds: as fvit analyze and eval
    pixels = prepare_image(decoded, pair.smoothing_size(cfg.smoothing.mode), mode=cfg.image_mode)
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
    g = image_seeds.generator("certify", *_parts(cfg))
    predict, radius, estimation = faithful_vit(cfg, pair).certify(x, c.n0, c.n, c.alpha, method=e.method,
                                                                  head_fusion=e.head_fusion, generator=g)
    try:
        topk_radius = certify.topk_certified_radius(estimation.attention, e.k, e.beta, sigma)
    except SettingError as exc:
        raise SettingError(f"top-k radius for k={e.k}, beta={e.beta}: {exc}") from exc
    row = {
        "idx": item.index, "label": item.label, "predict": int(predict), "radius": float(radius),
        "correct": int(predict == item.label), "time": time_text(time.perf_counter() - start),  # CERTIFY's cost
        "topk_radius": float(topk_radius),
        "topk_radius_linf": certify.linf_from_l2(float(topk_radius), int(np.prod(pixels.shape))),
        "image": item.path,
    }
    row.update(check_topk_certificate(cfg, pair, x, item, estimation.attention, topk_radius, image_seeds))
    return row


def check_topk_certificate(cfg: CertifyConfig, pair: ModelPair, x: torch.Tensor, item: ImageItem,
                           attention: np.ndarray, radius: float, image_seeds: ImageSeeds) -> dict[str, float | None]:
    """V_k(w~(x), w~(x')) at points x' within the certified top-k radius (module docstring)."""
    c, e = cfg.certificate, cfg.explanation
    checks: dict[str, float | None] = {name: None for name in CHECK_COLUMNS}
    if radius <= 0 or (c.check_random == 0 and not c.check_attacks):
        return checks
    g = image_seeds.generator("certify-check", *_parts(cfg))
    points = [x]  # an independent estimate at x itself: the noise floor
    if c.check_random:
        directions = torch.randn((c.check_random, *x.shape[1:]), generator=g)
        directions *= radius / directions.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        points.append((x + directions).clamp(0.0, 1.0))
    attacks = []
    if c.check_attacks:
        dim = int(np.prod(x.shape[1:]))
        linf = radius / math.sqrt(dim)
        label = torch.tensor([item.label], device=pair.device)
        for name, params, labels in (
            ("pgdl2", {"eps": radius, "alpha": radius / 5}, label),  # transfer attack on the label
            # the explanation attack keeps the prediction; alpha, k, method and fusion by the registry's rules
            ("topk", AttackSettings(name="topk", eps=linf).arguments(followed(None, e)), None),
        ):
            seed = image_seeds("certify-check", name)
            adv = run_attack(name, pair.classifier, x.to(pair.device), labels, params, denoiser=pair.denoiser,
                             seed=seed).cpu()
            points.append(adv)
            attacks.append(name)
    # Independent draws, as the certificate's own estimate (FaithfulViT.certify).
    outs = faithful_vit(cfg, pair).sample(torch.cat(points), c.check_samples or c.n, method=e.method,
                                          head_fusion=e.head_fusion, generator=g, scheme="independent")
    overlaps = [float(metrics.topk_overlap(attention, out.attention, e.k)) for out in outs]
    checks["check_floor"] = overlaps[0]
    if c.check_random:
        checks["check_random_min"] = min(overlaps[1:1 + c.check_random])
    for name, value in zip(attacks, overlaps[len(overlaps) - len(attacks):]):
        checks[f"check_{name}"] = value
    return checks


@dataclass
class CertifyReport:
    out: Path
    rows_written: int
    rows_total: int | None
    seconds: float
    rank: int
    world_size: int
    skipped: list[dict] = field(default_factory=list)  # rank 0: every rank's unreadable images


def run_certify(cfg: CertifyConfig, ctx: distributed.DistContext | None = None) -> CertifyReport:
    """Certify this rank's shard of the images, append rows, and (rank 0) merge and summarise."""
    start = time.perf_counter()
    run, smoothing = cfg.batch, cfg.smoothing
    files = certify_row_files(run.out)
    ctx, pair = start_run(cfg, ctx, CONFIG_FILE, files)
    check_schedule(pair.denoiser, smoothing.sigma, smoothing.mode, smoothing.multistep_steps)
    items = selected_items(cfg, pair)
    done = files.done_keys()
    todo = [item for item in distributed.shard(items, ctx) if item.path not in done]
    root = Path(run.data).expanduser()
    skipped = SkippedImages(run.out, ctx, run.strict)
    written = 0
    with files.log(ctx.rank, ctx.world_size) as log, progress_bar(len(todo), ctx, "certify", run.progress) as bar:
        for item in todo:
            try:
                row = certify_image(cfg, pair, item, root)
            except ImageError as exc:
                skipped.record(root, item, exc)
            except FViTError as exc:  # say which image a user's problem is about; a bug stays a bug
                raise type(exc)(f"{root / item.path}: {exc}") from exc
            else:
                log.append(_encode(row))
                written += 1
            bar.update(1)
    skipped.save()
    distributed.barrier(ctx)
    report = CertifyReport(out=Path(run.out), rows_written=written, rows_total=None,
                           seconds=time.perf_counter() - start, rank=ctx.rank, world_size=ctx.world_size)
    if ctx.is_main:
        report.skipped = skipped.collect()
        report.rows_total = finish_certify(cfg, files, {item.path for item in items}, ctx, report.seconds,
                                           skipped=report.skipped)
    return report


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def certified_accuracy(rows: list[dict], radii: np.ndarray) -> np.ndarray:
    """certify.certified_accuracy of CERTIFY rows, per radius (abstentions count as wrong)."""
    return certify.certified_accuracy([row["predict"] for row in rows], [row["label"] for row in rows],
                                      [row["radius"] for row in rows], radii)


def certify_summary(rows: list[dict], cfg: CertifyConfig) -> dict[str, Any]:
    """Certified accuracy at the radii (Wilson 95% intervals), abstain rate, top-k radius quantiles."""
    from fvit_core.batch.summary import wilson_ci

    c, e, smoothing = cfg.certificate, cfg.explanation, cfg.smoothing
    table = []
    for r in c.radii:
        est = wilson_ci([int(row["correct"] == 1 and row["radius"] >= r) for row in rows])
        topk = wilson_ci([int(row["topk_radius"] >= r) for row in rows]) if r > 0 else None
        table.append({"radius": r, "certified_accuracy": est.mean, "low": est.low, "high": est.high,
                      "topk_certified_fraction": topk.mean if topk else None})
    topk_radii = np.array([row["topk_radius"] for row in rows], dtype=np.float64)
    quantiles = {f"q{int(q * 100):02d}": float(np.quantile(topk_radii, q)) for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)}
    abstain = float(np.mean([row["predict"] == certify.ABSTAIN for row in rows])) if rows else math.nan
    checked = [row for row in rows if any(row.get(c) is not None for c in CHECK_COLUMNS[1:])]
    check = None
    if checked:
        worst = [min(row[c] for c in CHECK_COLUMNS[1:] if row.get(c) is not None) for row in checked]
        check = {"images": len(checked), "held": int(sum(w >= e.beta for w in worst)),
                 "min_overlap": float(min(worst)), "mean_floor": float(np.mean([row["check_floor"] for row in checked])),
                 **{f"min_{c}": float(min(row[c] for row in checked)) for c in CHECK_COLUMNS[1:]
                    if all(row.get(c) is not None for row in checked)}}
    return {"n": len(rows), "sigma": smoothing.sigma, "n0": c.n0, "n_samples": c.n, "alpha": c.alpha,
            "mode": smoothing.mode, "method": e.method, "k": e.k, "beta": e.beta, "abstain_rate": abstain, "table": table,
            "topk_radius": {"mean": float(topk_radii.mean()) if rows else None,
                            "positive_fraction": float(np.mean(topk_radii > 0)) if rows else None, **quantiles},
            "seconds_per_image": float(np.mean([time_seconds(row["time"]) for row in rows])) if rows else None,
            "certificate_check": check}


def _markdown(summary: dict) -> str:
    lines = ["# Certification summary\n",
             f"{summary['n']} images; mode {summary['mode']}, sigma {summary['sigma']:g}, n0 {summary['n0']}, "
             f"n {summary['n_samples']}, alpha {summary['alpha']:g}; top-{summary['k']} attention with beta "
             f"{summary['beta']:g} ({summary['method']}). Abstained: {summary['abstain_rate']:.3f}. "
             f"Seconds per image: {summary['seconds_per_image']:.3f}.\n",
             "| L2 radius | certified accuracy [95% CI] | top-k radius >= r |", "| --- | --- | --- |"]
    for row in summary["table"]:
        topk = "-" if row["topk_certified_fraction"] is None else f"{row['topk_certified_fraction']:.3f}"
        lines.append(f"| {row['radius']:g} | {row['certified_accuracy']:.3f} [{row['low']:.3f}, {row['high']:.3f}] | {topk} |")
    q = summary["topk_radius"]
    lines += ["", "Top-k attention radius (L2): " + ", ".join(
        f"{name} {q[name]:.4g}" for name in ("mean", "q00", "q10", "q25", "q50", "q75", "q90", "q100")) +
        f"; positive for {q['positive_fraction']:.3f} of images.", ""]
    check = summary["certificate_check"]
    if check:
        lines += [f"Top-k certificate check: V_k >= beta ({summary['beta']:g}) held at every checked point for "
                  f"{check['held']} of {check['images']} images; smallest V_k {check['min_overlap']:.3f}; mean noise "
                  f"floor {check['mean_floor']:.3f}.", ""]
    return "\n".join(lines)


def finish_certify(cfg: CertifyConfig, files: RowFiles, planned: set, ctx: distributed.DistContext,
                   seconds: float, skipped: list[dict] | tuple = ()) -> int:
    """Merge the TSV shards, write certified_accuracy.{csv,md,json}, the figures and run info."""
    from fvit_core.batch.report import hardware

    out, smoothing, e = Path(cfg.batch.out), cfg.smoothing, cfg.explanation
    rows, counts = files.merge()
    current = [row for row in rows if row["image"] in planned]
    if not current:
        return 0
    summary = certify_summary(current, cfg)
    csv_lines = ["radius,certified_accuracy,low,high,topk_certified_fraction"] + [
        f"{r['radius']!r},{r['certified_accuracy']!r},{r['low']!r},{r['high']!r},"
        f"{'' if r['topk_certified_fraction'] is None else repr(r['topk_certified_fraction'])}" for r in summary["table"]]
    atomic_write_text(out / "certified_accuracy.csv", "\n".join(csv_lines) + "\n")
    atomic_write_text(out / "certified_accuracy.md", _markdown(summary) + skipped_markdown(skipped))
    atomic_write_text(out / "certified_accuracy.json", json.dumps(summary, indent=1) + "\n")
    if cfg.batch.figures:
        from fvit_core.batch.plots import certified_accuracy_curve, radius_histogram

        top = max(1.0, max(row["radius"] for row in current) * 1.05)
        grid = np.linspace(0.0, top, 201)
        certified_accuracy_curve(grid, certified_accuracy(current, grid), out / "certified_accuracy.png",
                                 title=f"{smoothing.mode.upper()} sigma {smoothing.sigma:g}, n {cfg.certificate.n}")
        radius_histogram(np.array([row["topk_radius"] for row in current]), out / "topk_radius_hist.png",
                         title=f"top-{e.k} radius (beta {e.beta:g}), sigma {smoothing.sigma:g}")
    info = {"command": "certify", "rows": len(current), "rows_missing": len(planned) - len(current),
            "world_size": ctx.world_size, "new_rows_by_file": counts, "wall_seconds_rank0": seconds,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "hardware": hardware(),
            "models": run_models(cfg), "device": cfg.models.device,
            "images_skipped": len(skipped), "skipped": list(skipped)}
    atomic_write_text(out / "run_info.json", json.dumps(info, indent=2) + "\n")
    return len(current)
