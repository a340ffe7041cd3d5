"""The bounds of every numeric setting, in one table shared by ``fvit analyze``, ``fvit eval`` and
``fvit certify`` (AnalysisConfig, EvalConfig, CertifyConfig) and the dashboard.

Settings come from users (flags, settings files, the dashboard). Each is checked against its
bounds before any model is loaded or any image decoded, so a value that would run for days, fill
the memory, or overflow (``n_samples: 1e12``, ``bootstrap: 1e9``, a 400-digit integer,
``sigma: 1e-300``) is refused in one line that names the setting and its range. The upper bounds
are far above any sensible run (the paper's largest: N = 100,000 for certification) and bound
the memory a run can ask for: samples kept per estimate (N x patches floats), a forward batch
(batch x 3 x H x W floats), bootstrap resamples (resamples x N counts).

docs/RELIABILITY.md lists the table; :func:`bounds_table` prints it.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from fvit_core.errors import InputError, SettingError

SEED_MAX = 2**63 - 1


@dataclass(frozen=True)
class Bound:
    """Allowed values of one setting: ``low``..``high`` (``open_low`` / ``open_high``: the end
    itself excluded), whole numbers only when ``whole``; ``meaning`` goes into the message."""

    low: float
    high: float
    whole: bool
    meaning: str
    open_low: bool = False
    open_high: bool = False

    def text(self, low: float | None = None) -> str:
        low = self.low if low is None else low
        if self.whole:
            return f"{_number(low)}..{_number(self.high)}"
        return f"{'(' if self.open_low else '['}{_number(low)}, {_number(self.high)}{')' if self.open_high else ']'}"


def _number(value: float) -> str:
    if value == SEED_MAX:
        return "2**63-1"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:g}"


BOUNDS: dict[str, Bound] = {
    # smoothing
    "sigma": Bound(0.001, 4.0, False, "noise std in pixel units, e.g. 0.25"),
    "n_samples": Bound(1, 100_000, True, "Monte Carlo samples per estimate"),
    "batch_size": Bound(1, 4096, True, "samples per forward pass"),
    "multistep_steps": Bound(1, 1000, True, "denoising steps of mode multistep, at most t*"),
    "bootstrap": Bound(0, 10_000, True, "bootstrap resamples"),
    # explanation and certificates
    "k": Bound(1, 65_536, True, "top-k focal patches, at most the model's patches"),
    "target": Bound(0, 100_000, True, "class index the explanation explains, below the model's classes"),
    "beta": Bound(0.0, 1.0, False, "required top-k overlap", open_low=True),
    "confidence_alpha": Bound(0.0, 0.5, False, "failure probability of the certificate", True, True),
    "alpha": Bound(0.0, 0.5, False, "failure probability of the certificate, e.g. 0.001", True, True),
    "renyi_alpha": Bound(1.0, 1000.0, False, "order of the Renyi divergence", open_low=True),
    "early_stop_alpha": Bound(0.0, 1.0, False, "significance level of early stopping", True, True),
    # attack shortcuts (each attack's own parameters have their own ranges: fvit attacks)
    "eps": Bound(0.0, 1000.0, False, "attack budget in pixel units, e.g. 8/255"),
    "steps": Bound(1, 100_000, True, "attack iterations"),
    # randomness and image selection
    "seed": Bound(0, SEED_MAX, True, "random seed"),
    "subset_seed": Bound(0, SEED_MAX, True, "seed of the image order"),
    "limit": Bound(1, 100_000_000, True, "images to evaluate"),
    # fvit eval
    "pt_samples": Bound(1, 100_000, True, "smoothing samples per perturbed image"),
    # neighbourhood sensitivity (fvit_core/explanations/sensitivity.py; 0 = off)
    "sensitivity_samples": Bound(0, 64, True, "perturbations per image for the neighbourhood sensitivity"),
    "sensitivity_radius": Bound(0.0, 1.0, False, "radius of the sensitivity ball in pixel units", open_low=True),
    # fvit certify
    "n0": Bound(1, 1_000_000, True, "selection samples"),
    "n": Bound(1, 1_000_000, True, "estimation samples"),
    "check_random": Bound(0, 10_000, True, "random points checked per image"),
    "check_samples": Bound(2, 1_000_000, True, "samples per checked point"),
    "radii": Bound(0.0, 1000.0, False, "L2 radius of the certified-accuracy table"),
}
# Bootstrap resamples x samples: the bootstrap holds about 40 bytes per (resample, sample) pair
# at once (index and count arrays), so 10 M pairs is about 400 MB.
MAX_BOOTSTRAP_DRAWS = 10_000_000
# Lists of fvit eval's grid and certify's table: how many values each may hold.
MAX_LIST = 1000
# fvit eval's grid: attacks x budgets x modes x sigmas x methods.
MAX_GRID = 10_000


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value), cut to ``limit`` characters (a setting may be a 100 MB string)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value)))} digits"  # str() of a huge int is slow and long
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(name: str, value: Any, *, low: float | None = None, bound: Bound | None = None) -> None:
    """ValueError (one line) unless ``value`` is a number within the bounds of setting ``name``.

    ``low`` raises the lower end (n_samples >= 2 with a noise floor); ``bound`` replaces the
    table's entry. Integers are compared exactly (a 400-digit integer never meets a float).
    """
    spec = bound or BOUNDS[name]
    lowest = spec.low if low is None else max(low, spec.low)
    wanted = f"{'a whole number' if spec.whole else 'a number'} in {spec.text(lowest)} ({spec.meaning})"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingError(f"{name} must be {wanted}, got {short_repr(value)}")
    if spec.whole and not isinstance(value, numbers.Integral):
        raise SettingError(f"{name} must be {wanted}, got {short_repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{name} must be {wanted}, got {short_repr(value)}")
    below = value <= lowest if spec.open_low else value < lowest
    above = value >= spec.high if spec.open_high else value > spec.high
    if below or above:
        raise SettingError(f"{name} must be {wanted}, got {short_repr(value)}")


def check_list(name: str, values: Any, item: str | None = None, *, allow_empty: bool = False,
               bound_free: bool = False) -> None:
    """A list setting (fvit eval's sigmas, certify's radii): at most MAX_LIST values, each within
    the bounds of ``item`` (default: ``name``); ``bound_free``: a list of names, length only."""
    if not isinstance(values, (list, tuple)):
        raise SettingError(f"{name} must be a list of values, got {short_repr(values)}")
    if not values and not allow_empty:
        raise SettingError(f"give at least one value for {name}")
    if len(values) > MAX_LIST:
        raise SettingError(f"{name} holds {len(values):,} values, over the limit of {MAX_LIST:,}")
    for value in () if bound_free else values:
        check(item or name, value)


# A settings file (or label map) is a few hundred bytes; a megabyte is far more than any needs.
MAX_SETTINGS_BYTES = 1_000_000


def read_settings_text(path: str | os.PathLike, what: str, max_bytes: int = MAX_SETTINGS_BYTES) -> str:
    """The text of a small settings file: a regular file of at most ``max_bytes``, UTF-8.

    Opened without blocking and checked on the open descriptor, so a FIFO, a device
    (/dev/zero), a directory or a file swapped for one after a check is refused without reading;
    at most ``max_bytes + 1`` bytes are ever read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{what} {path} is not a regular file (a folder, device or pipe); give a JSON file")
        if info.st_size > max_bytes:
            raise InputError(f"{what} {path} is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputError(f"{what} {path} is over the limit of {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start}); give a JSON file") from exc


def bounds_table() -> str:
    """The table as Markdown (docs/RELIABILITY.md)."""
    lines = ["| setting | allowed | meaning |", "| --- | --- | --- |"]
    for name, spec in BOUNDS.items():
        lines.append(f"| `{name}` | {'whole number ' if spec.whole else ''}{spec.text()} | {spec.meaning} |")
    return "\n".join(lines)



def check_choice(what: str, value: Any, allowed: Iterable[str]) -> None:
    """SettingError naming the allowed values unless ``value`` is one of them."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise SettingError(f"unknown {what} {short_repr(value)}; choose one of {', '.join(allowed)}")


def check_choices(what: str, values: Sequence[Any], allowed: Iterable[str], *, name: str | None = None) -> None:
    """A list setting of names (fvit eval's grid): at least one, at most limits.MAX_LIST, each allowed."""
    check_list(name or what, values, bound_free=True)
    for value in values:
        check_choice(what, value, allowed)


if __name__ == "__main__":  # python -m fvit_core.protocol.limits: the table for the docs
    print(bounds_table())
