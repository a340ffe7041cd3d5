"""Means with 95% confidence intervals over images, and the CSV / Markdown summary tables.

- Continuous per-image values (top-k overlap, divergences, AUCs, seconds): the Student t
  interval mean +- t_{0.975, n-1} * s / sqrt(n), s the sample standard deviation (ddof 1).
  With n = 1 the interval is the point itself (no spread is known).
- Rates of 0/1 outcomes (accuracy, label flips): the Wilson score interval, which stays in
  [0, 1] and has width at 0% and 100% (the normal interval collapses there).
- The segmentation test's pixel accuracy, mIoU and mAP, pooled over images as the reference
  code pools them: the percentile bootstrap over images (2,000 resamples, seed 0).
Missing values (None: e.g. no noise floor for the vanilla ViT) are left out; n counts the rest.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy.stats import norm, t as student_t

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean and its 95% interval over n values."""

    mean: float
    low: float
    high: float
    n: int

    def cell(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


NO_DATA = Estimate(math.nan, math.nan, math.nan, 0)


def _values(values: Iterable[Any]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None], dtype=np.float64)


def mean_ci(values: Iterable[Any], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and Student t interval of the non-missing values."""
    x = _values(values)
    if x.size == 0:
        return NO_DATA
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, mean, mean, 1)
    half = float(student_t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(mean, mean - half, mean + half, int(x.size))


def wilson_ci(values: Iterable[Any], confidence: float = CONFIDENCE) -> Estimate:
    """Rate of 0/1 (or bool) values with the Wilson score interval."""
    x = _values(values)
    if x.size == 0:
        return NO_DATA
    if np.any((x != 0) & (x != 1)):
        raise ValueError("wilson_ci needs 0/1 outcomes")
    n, p = x.size, float(x.mean())
    z = float(norm.ppf(0.5 + confidence / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At p = 0 (or 1) the bound is exactly 0 (or 1); the formula leaves round-off there.
    low = 0.0 if p == 0.0 else max(0.0, centre - half)
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return Estimate(p, low, high, n)


@dataclass(frozen=True)
class Metric:
    """A summary column: name, how to read it from a row, interval kind, Markdown heading."""

    name: str
    get: Callable[[dict], Any]
    kind: str  # "mean" (t interval), "rate" (Wilson) or "pooled:<segmentation metric>" (bootstrap)
    heading: str

    def estimate(self, rows: Sequence[dict]) -> Estimate:
        values = [self.get(row) for row in rows]
        if self.kind.startswith("pooled:"):
            return pooled_ci(values, self.kind.split(":", 1)[1])
        return mean_ci(values) if self.kind == "mean" else wilson_ci(values)


BOOTSTRAP_RESAMPLES = 2000


def pooled_ci(counts: Iterable[Any], name: str, confidence: float = CONFIDENCE,
              resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Estimate:
    """A segmentation metric pooled over images (metrics.segmentation_scores: pixel accuracy
    and mIoU are ratios of sums, mAP a mean) with the percentile bootstrap interval over images
    (``resamples`` resamples of the images with replacement, a fixed seed so the summary is
    reproducible). Missing counts (None: no mask) are left out."""
    from fvit_core.metrics import resampled_segmentation_scores, segmentation_scores

    values = [c for c in counts if c is not None]
    if not values:
        return NO_DATA
    point = segmentation_scores(values)[name]
    if len(values) == 1:
        return Estimate(point, point, point, 1)
    picks = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    draws = resampled_segmentation_scores(values, picks)[name]
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Estimate(float(point), float(low), float(high), len(values))


def summarise(rows: Sequence[dict], group_fields: Sequence[str], metrics: Sequence[Metric],
              order: Callable[[tuple], Any] | None = None) -> list[dict]:
    """One record per distinct value of ``group_fields``: the group values, n and an
    :class:`Estimate` per metric (keyed by the metric's name)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(f) for f in group_fields), []).append(row)
    keys = sorted(groups, key=order) if order else list(groups)
    out = []
    for key in keys:
        members = groups[key]
        record: dict[str, Any] = dict(zip(group_fields, key))
        record["n"] = len(members)
        for metric in metrics:
            record[metric.name] = metric.estimate(members)
        out.append(record)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else value


def to_csv(records: Sequence[dict], group_fields: Sequence[str], metrics: Sequence[Metric]) -> str:
    """CSV text: group fields, n, then <metric>_mean, <metric>_lo, <metric>_hi, <metric>_n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [*group_fields, "n"]
    for metric in metrics:
        header += [f"{metric.name}_mean", f"{metric.name}_lo", f"{metric.name}_hi", f"{metric.name}_n"]
    writer.writerow(header)
    for record in records:
        line = [_plain(record[f]) for f in group_fields] + [record["n"]]
        for metric in metrics:
            est: Estimate = record[metric.name]
            line += [_plain(est.mean), _plain(est.low), _plain(est.high), est.n]
        writer.writerow(line)
    return buffer.getvalue()


def to_markdown(records: Sequence[dict], columns: Sequence[tuple[str, Callable[[dict], str]]],
                metrics: Sequence[Metric], digits: int = 3) -> str:
    """A Markdown table: the given leading columns, then 'mean [low, high]' per metric."""
    heading = [name for name, _ in columns] + [m.heading for m in metrics]
    lines = ["| " + " | ".join(heading) + " |", "|" + "|".join(" --- " for _ in heading) + "|"]
    for record in records:
        cells = [fmt(record) for _, fmt in columns] + [record[m.name].cell(digits) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
