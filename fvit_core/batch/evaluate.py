"""``fvit eval``: the evaluation protocols of docs/METHOD.md, section 7, over an image folder.

A run evaluates a grid of *settings* (attack, eps, mode, sigma, method) on every selected
image and appends one JSON row per (image, setting) to ``OUT/rows.jsonl`` as it goes; at the
end it writes the summary tables and figures (:mod:`.report`).

Reuse. Per image, intermediate results (*units*) are computed once and shared by every setting
that needs them:
- the attack on (attack, eps): shared by all sigmas, modes and methods; except ``eot_dds``,
  which attacks the FViT at one sigma, and ``topk``, which attacks the explanation method (and
  k) being evaluated;
- the vanilla ViT's explanation per (image, method), clean and per attacked image;
- the smoothed clean estimate and its noise floor (``noise_floor_estimator``: the bootstrap of
  its samples, or an independent second estimate) per (mode, sigma, method): shared by every attack and budget;
- the perturbation test per (mode, sigma, method), on the clean image;
- the neighbourhood sensitivity per (mode, sigma, method), on the clean image (when
  ``sensitivity_samples`` > 0).
A row's ``seconds`` is its share of the units it used (each unit's time divided by the number
of rows of this run that use it), so the seconds of an image's rows add up to its cost.

Randomness. Every unit draws from its own generator, seeded from (seed, the digest of the decoded
image, stage, setting) by protocol/seeds.py, exactly as ``fvit analyze`` and the dashboard seed
theirs (so one image gives the same numbers in every front): results do not depend on the order of images, on which rank evaluates
them, on how many rows a resumed run still had to compute, on images added to the folder, or on
the batch size (noise is drawn on the CPU; batched float arithmetic may differ in the last bits).

Transfer setting: attacks are crafted on the vanilla ViT against the true label (``topk``
keeps the model's own prediction, as Ghorbani et al.), and the same attacked image is fed to
the vanilla ViT and to the smoothed models; ``eot_dds`` is the adaptive attack on the FViT.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from fvit_core import metrics
from fvit_core.analysis.noise_floor import floor_pairs, map_metrics_floor, noise_floor_estimate
from fvit_core.attacks.runner import run_attack
from fvit_core.attacks.settings import ResolvedAttack
from fvit_core.batch.config import EvalConfig
from fvit_core.batch.grid import Setting, key_of_row, row_key, row_order, settings_grid
from fvit_core.batch.store import RowFiles, json_line
from fvit_core.data.files import atomic_write_text
from fvit_core.data.folders import ImageItem, list_items, read_label_map, select
from fvit_core.data.images import ImageError, image_digest, load_image, prepare_image
from fvit_core.data.segmentation import (GtSegs, SegmentedImage, fit_mask, gtsegs_index, gtsegs_item_name, is_gtsegs,
                                         load_mask, mask_path)
from fvit_core.errors import FViTError, InputError, SettingError
from fvit_core.explanations.perturbation_test import perturbation_auc, perturbed_batch, split_hits
from fvit_core.explanations.sensitivity import ball_perturbations, relative_change, sensitivity
from fvit_core.method import certify
from fvit_core.method.denoise import check_schedule
from fvit_core.method.faithful_vit import FaithfulViT
from fvit_core.method.monte_carlo import SmoothedOutput
from fvit_core.method.vanilla import vanilla
from fvit_core.models import ModelPair
from fvit_core.protocol.seeds import ImageSeeds, smoothing_parts
from fvit_core.protocol.settings import flat_defaults
from fvit_core.runtime import distributed
from fvit_core.runtime.sampling import scheme_normals

CONFIG_FILE = "eval_config.json"
# How per-image seeds are derived (protocol/seeds.py), recorded in the output folder's settings:
# 1 = from the image's path (before issue #12), 2 = from the decoded image's digest.
SEED_PROTOCOL = 2


def eval_row_files(out: str | Path) -> RowFiles:
    return RowFiles(out, "rows", "jsonl", encode=json_line, decode=json.loads, key=key_of_row, sort_key=row_order)


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


class _Units:
    """Timed, lazily computed intermediate results of one image, shared by its settings."""

    def __init__(self) -> None:
        self.values: dict[tuple, Any] = {}
        self.seconds: dict[tuple, float] = {}
        self.uses: Counter = Counter()

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self.values:
            start = time.perf_counter()
            self.values[key] = compute()
            self.seconds[key] = time.perf_counter() - start
        return self.values[key]

    def share(self, keys: Sequence[tuple]) -> float:
        return float(sum(self.seconds[k] / max(self.uses[k], 1) for k in keys))


class ImageEvaluation:
    """The rows of one image for a list of settings (only those still missing on a resume)."""

    def __init__(self, cfg: EvalConfig, pair: ModelPair, item: ImageItem, root: Path,
                 attacks: dict[Setting, ResolvedAttack] | None = None, segmented: SegmentedImage | None = None):
        self.cfg, self.pair, self.item = cfg, pair, item
        # Each setting's attack, resolved once per run (run_eval) or, alone, once per image.
        self.attacks = attacks if attacks is not None else {}
        # The object mask of the segmentation test: from a gtsegs file (``segmented``) or the mask folder.
        self.mask: np.ndarray | None = None
        self.fitted_mask: np.ndarray | None = None  # the mask on the classifier's input, made on first use
        if segmented is not None:
            self.decoded, self.mask = segmented.pixels, segmented.mask
        else:
            self.decoded = load_image(root / item.path)
            if cfg.segmentation.masks is not None:
                self.mask = load_mask(mask_path(cfg.segmentation.masks, item.path), self.decoded.shape[1:])
        self.labels: dict[tuple[int, int], int] = {}
        # The image's identity for its seeds is the digest of the decoded pixels, as in fvit analyze.
        self.seeds = ImageSeeds(cfg.seed, image_digest(self.decoded))
        self.prepared: dict[tuple[int, int], torch.Tensor] = {}
        self.grid = pair.classifier.grid_size
        self.units = _Units()
        self.k, self.head_fusion = cfg.explanation.k, cfg.explanation.head_fusion

    def x(self, s: Setting) -> torch.Tensor:
        """The image (1, 3, H, W) prepared in the pixel space of ``s``'s mode (ModelPair.smoothing_size): one
        space for the vanilla ViT and every denoising mode, the classifier's size for rs."""
        size = self.pair.smoothing_size(s.mode)
        if size not in self.prepared:
            pixels = prepare_image(self.decoded, size, mode=self.cfg.image_mode)
            self.prepared[size] = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None].to(
                self.pair.device)
        return self.prepared[size]

    def _space(self, s: Setting) -> tuple[int, int]:
        return self.pair.smoothing_size(s.mode)

    def label(self, s: Setting) -> int:
        """The label the attack and the accuracies use: the folder's class, or, for an image
        without one (a gtsegs file), the vanilla ViT's prediction on the clean image in ``s``'s
        pixel space (what an analysis explains and attacks)."""
        if self.item.label is not None:
            return self.item.label
        space = self._space(s)
        if space not in self.labels:
            with torch.no_grad():
                self.labels[space] = int(self.pair.classifier(self.x(s)).argmax(-1)[0])
        return self.labels[space]

    # -- units ------------------------------------------------------------------------------

    def _generator(self, stage: str, s: Setting, *parts: Any) -> torch.Generator:
        """The generator of ``stage`` for setting ``s`` (protocol/seeds: as fvit analyze)."""
        return self.seeds.generator(stage, *smoothing_parts(s.mode, s.sigma, s.method), *parts)

    def _unit_keys(self, s: Setting) -> list[tuple]:
        akey, space = self._attack_of(s).seed_parts, self._space(s)
        keys = [("attack", akey, space), ("vanilla", None, s.method, space)]
        if s.smoothed:
            keys += [("clean", s.mode, s.sigma, s.method), ("attacked", akey, s.mode, s.sigma, s.method)]
        else:
            keys.append(("vanilla", akey, s.method, space))
        if self.cfg.perturbation.enabled:
            keys.append(("pt", s.mode, s.sigma, s.method))
        if self.cfg.sensitivity.enabled:
            keys.append(("sens", s.mode, s.sigma, s.method))
        return keys

    def _attack_of(self, s: Setting) -> ResolvedAttack:
        if s not in self.attacks:
            self.attacks[s] = self.cfg.resolved_attack(s)
        return self.attacks[s]

    def _attack(self, s: Setting) -> torch.Tensor:
        attack = self._attack_of(s)
        labels = None if s.attack == "topk" else torch.tensor([self.label(s)], device=self.pair.device)
        seed = self.seeds("attack", *attack.seed_parts)
        return run_attack(s.attack, self.pair.classifier, self.x(s), labels, attack.params,
                          denoiser=self.pair.denoiser, seed=seed)

    def _vanilla(self, image: torch.Tensor, method: str) -> tuple[np.ndarray, np.ndarray]:
        att, probs, _ = vanilla(self.pair, image, method=method, head_fusion=self.head_fusion)
        return att[0], probs[0]

    def _fvit(self, s: Setting) -> FaithfulViT:
        """The setting's FViT under the run's runtime."""
        return FaithfulViT.of(self.pair, self.cfg.smoothing_of(s.mode, s.sigma), self.cfg.runtime)

    def _smooth(self, images: torch.Tensor, s: Setting, generator: torch.Generator, *, n_samples: int | None = None,
                method: str | None = None, noise: torch.Tensor | None = None,
                keep_samples: bool = False) -> list[SmoothedOutput]:
        """The setting's FViT's Monte Carlo estimates of ``images``."""
        return self._fvit(s).sample(images, n_samples or self.cfg.sampling.n_samples, method=method or s.method,
                                    head_fusion=self.head_fusion, keep_samples=keep_samples, generator=generator,
                                    noise=noise, scheme=self.cfg.sampling.scheme)

    def _shared_noise(self, s: Setting) -> torch.Tensor | None:
        if not self.cfg.sampling.shared_noise or s.mode == "denoise-only":
            return None
        normals = scheme_normals(self.cfg.sampling.n_samples, tuple(self.x(s).shape[1:]), self._generator("noise", s),
                                 antithetic=self.cfg.sampling.scheme == "antithetic")
        return s.sigma * normals

    def _clean(self, s: Setting) -> tuple[SmoothedOutput, SmoothedOutput | None, torch.Tensor | None]:
        """(clean estimate, independent second estimate or None, shared noise or None)."""
        g = self._generator("clean", s)
        noise = self._shared_noise(s)
        floor_batch = self.cfg.floor.second_estimate
        # The bootstrap floor resamples the clean estimate's own samples.
        keep = self.cfg.floor.from_bootstrap
        if noise is None:
            x = self.x(s)
            batch = torch.cat([x, x]) if floor_batch else x
            outs = self._smooth(batch, s, g, keep_samples=keep)
            return outs[0], (outs[1] if floor_batch else None), None
        clean = self._smooth(self.x(s), s, g, noise=noise, keep_samples=keep)[0]
        floor = None
        if floor_batch:
            floor = self._smooth(self.x(s), s, self._generator("floor", s))[0]
        return clean, floor, noise

    def _attacked(self, s: Setting) -> SmoothedOutput:
        akey = self._attack_of(s).seed_parts
        x_adv = self.units.values[("attack", akey, self._space(s))]
        noise = self.units.values[("clean", s.mode, s.sigma, s.method)][2]
        g = self._generator("attacked", s, *akey)
        return self._smooth(x_adv, s, g, noise=noise)[0]

    def _perturbation_test(self, s: Setting) -> tuple[list[int], list[int]]:
        clf = self.pair.classifier
        if s.smoothed:
            attention = self.units.values[("clean", s.mode, s.sigma, s.method)][0].attention
        else:
            attention = self.units.values[("vanilla", None, s.method, self._space(s))][0]
        batch = perturbed_batch(self.x(s)[0], attention, clf.grid_size, fill=self.cfg.perturbation.fill)
        if s.smoothed:
            # The smoothed prediction with pt_samples draws; the explanation computed alongside
            # is not used, so the cheapest method is asked for.
            g = self._generator("pt", s)
            outs = self._smooth(batch, s, g, n_samples=self.cfg.perturbation.samples, method="raw")
            predictions = [out.label for out in outs]
        else:
            with torch.no_grad():
                predictions = clf(batch.to(self.pair.device)).argmax(-1).tolist()
        return split_hits(predictions, self.label(s))

    def _sensitivity(self, s: Setting) -> dict[str, float | None]:
        """Max / mean sensitivity of the clean explanation over the ball draws (and, smoothed, the
        floor: the same relative change between the clean estimate and its second estimate)."""
        sens = self.cfg.sensitivity
        draws = self.seeds.generator("sensitivity-draws")  # the same M images for every mode and method
        images = ball_perturbations(self.x(s), sens.samples, sens.radius, sens.norm, draws)
        if not s.smoothed:
            attention = vanilla(self.pair, images, method=s.method, head_fusion=self.head_fusion).attention
            return {**sensitivity(self.units.values[("vanilla", None, s.method, self._space(s))][0], attention), "floor": None}
        clean_out, floor_out, _ = self.units.values[("clean", s.mode, s.sigma, s.method)]
        outs = self._smooth(images.cpu(), s, self._generator("sensitivity", s))
        pairs = self._floor_pairs(s, clean_out, floor_out)
        floor = None if pairs is None else float(relative_change(pairs[0], pairs[1]).mean())
        return {**sensitivity(clean_out.attention, np.stack([o.attention for o in outs])), "floor": floor}

    def _floor_pairs(self, s: Setting, clean: SmoothedOutput, second: SmoothedOutput | None
                     ) -> tuple[np.ndarray, np.ndarray] | None:
        """Noise-only pairs of clean maps (analysis.noise_floor.floor_pairs, the same draws as fvit analyze)."""
        return floor_pairs(self.cfg.floor, clean, second, self._bootstrap_rng(s, "pairs"))

    def _bootstrap_rng(self, s: Setting, purpose: str) -> np.random.Generator:
        return self.seeds.rng("bootstrap", *smoothing_parts(s.mode, s.sigma, s.method), purpose)

    def _compute(self, key: tuple, s: Setting) -> Any:
        kind = key[0]
        if kind == "attack":
            return self._attack(s)
        if kind == "vanilla":
            image = self.x(s) if key[1] is None else self.units.values[("attack", key[1], key[3])]
            return self._vanilla(image, s.method)
        if kind == "clean":
            return self._clean(s)
        if kind == "attacked":
            return self._attacked(s)
        if kind == "sens":
            return self._sensitivity(s)
        return self._perturbation_test(s)

    # -- rows -------------------------------------------------------------------------------

    def rows(self, settings: Sequence[Setting]) -> Iterator[dict]:
        """One row per setting, yielded as soon as its units are computed."""
        plans = [(s, self._unit_keys(s)) for s in settings]
        for _, keys in plans:
            self.units.uses.update(keys)
        for s, keys in plans:
            for key in keys:  # listed in dependency order
                self.units.get(key, lambda key=key: self._compute(key, s))
            yield self._row(s, keys)

    def _row(self, s: Setting, keys: list[tuple]) -> dict:
        cfg, v, k = self.cfg, self.units.values, self.k
        akey, space = self._attack_of(s).seed_parts, self._space(s)
        x_adv = v[("attack", akey, space)]
        vanilla_clean = v[("vanilla", None, s.method, space)]
        floor = agreement = radius = map_floor = None
        n_samples = None
        if s.smoothed:
            clean_out, floor_out, _ = v[("clean", s.mode, s.sigma, s.method)]
            adv_out = v[("attacked", akey, s.mode, s.sigma, s.method)]
            clean = (clean_out.attention, clean_out.probs)
            attacked = (adv_out.attention, adv_out.probs)
            n_samples = clean_out.n_samples
            # The noise floor of the chosen estimator, computed as fvit analyze does.
            floor = noise_floor_estimate(cfg.floor, k, clean_out, floor_out, self._bootstrap_rng(s, "floor")).value
            map_floor = map_metrics_floor(self._floor_pairs(s, clean_out, floor_out), self.grid, k)
            agreement = float(metrics.topk_overlap(vanilla_clean[0], clean_out.attention, k))
            radius = self._topk_radius(clean_out.attention, s)
        else:
            clean, attacked = vanilla_clean, v[("vanilla", akey, s.method, space)]
        pred_clean, pred_attacked = int(np.argmax(clean[1])), int(np.argmax(attacked[1]))
        delta = (x_adv - self.x(s)).flatten()
        label = self.label(s)
        row = {
            "image": self.item.path, "index": self.item.index, "label": label,
            "label_source": "folder" if self.item.label is not None else "vanilla-prediction",
            "mode": s.mode, "attack": s.attack, "eps": s.eps, "sigma": s.sigma, "method": s.method, "k": k,
            "n_samples": n_samples,
            "pred_clean": pred_clean, "pred_attacked": pred_attacked,
            "correct_clean": pred_clean == label, "correct_attacked": pred_attacked == label,
            "label_flip": pred_clean != pred_attacked,
            "topk_overlap": float(metrics.topk_overlap(clean[0], attacked[0], k)),
            "topk_overlap_floor": floor, "topk_overlap_vanilla": agreement,
            "divergence": {name: float(value) for name, value in
                           metrics.divergences(clean[1], attacked[1], renyi_alpha=cfg.renyi_alpha).items()},
            "topk_radius": radius,
            "perturbation_linf": float(delta.abs().max()), "perturbation_l2": float(delta.norm()),
            # metrics.MAP_METRICS, attacked vs clean; the floor: second clean estimate vs clean
            "map_metrics": metrics.map_metrics(clean[0], attacked[0], self.grid, k),
            "map_metrics_floor": map_floor,
            "sensitivity": v.get(("sens", s.mode, s.sigma, s.method)),
            "segmentation": self._segmentation(clean[0], attacked[0]),
        }
        row.update(self._pt_fields(s))
        row["seconds"] = self.units.share(keys)
        return row

    def _segmentation(self, clean: np.ndarray, attacked: np.ndarray) -> dict | None:
        """The segmentation test's per-image counts (metrics.segmentation_counts) of the clean and
        of the attacked explanation, both against the clean image's mask fitted to the
        classifier's input (the region its patches cover); None without a mask."""
        if self.mask is None:
            return None
        if self.fitted_mask is None:  # once per image: every setting compares with the same mask
            self.fitted_mask = fit_mask(self.mask, tuple(self.pair.classifier.img_size), mode=self.cfg.image_mode)
        mask = self.fitted_mask
        return {"clean": metrics.segmentation_counts(clean, mask, self.grid),
                "attacked": metrics.segmentation_counts(attacked, mask, self.grid)}

    def _pt_fields(self, s: Setting) -> dict:
        if not self.cfg.perturbation.enabled:
            return {"pt_auc_positive": None, "pt_auc_negative": None, "pt_positive": None, "pt_negative": None}
        positive, negative = self.units.values[("pt", s.mode, s.sigma, s.method)]
        return {"pt_auc_positive": perturbation_auc(positive), "pt_auc_negative": perturbation_auc(negative),
                "pt_positive": positive, "pt_negative": negative}

    def _topk_radius(self, attention: np.ndarray, s: Setting) -> float | None:
        if s.mode == "denoise-only":
            return None  # no noise, no certificate
        try:
            return float(certify.topk_certified_radius(attention, self.k, self.cfg.explanation.beta, s.sigma))
        except SettingError:  # k too large for the bound (k + k0 > P)
            return None


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class EvalReport:
    """What a run did on this rank (and, on rank 0, the merged totals)."""

    out: Path
    rows_written: int
    rows_total: int | None
    rows_missing: int | None
    seconds: float
    rank: int
    world_size: int
    skipped: list[dict] = field(default_factory=list)  # rank 0: every rank's unreadable images


class SkippedImages:
    """Images of this rank that could not be read, recorded so the run can go on.

    Without ``strict`` an unreadable image (any :class:`ImageError`) is recorded with its path and
    reason and the run goes on; rank 0 collects every rank's list (:func:`collect`) into the
    summary and run_info.json. With ``strict`` the first one stops the run, with its path. A
    resumed run tries skipped images again (they have no rows), so the list is of this run only.
    """

    def __init__(self, out: str | Path, ctx: distributed.DistContext, strict: bool):
        self.out, self.ctx, self.strict = Path(out), ctx, strict
        self.items: list[dict] = []

    def path(self, rank: int) -> Path:
        return self.out / f".skipped.rank{rank}.json"

    def record(self, root: Path, item: ImageItem, exc: ImageError) -> None:
        where = root / item.path
        if self.strict:
            raise InputError(f"{where}: {exc} (--strict stops at the first unreadable image; without it, such "
                             "images are skipped and counted)") from exc
        self.items.append({"image": item.path, "reason": str(exc)})

    def save(self) -> None:
        atomic_write_text(self.path(self.ctx.rank), json.dumps(self.items) + "\n")

    def collect(self) -> list[dict]:
        """Rank 0, after the barrier: every rank's list (their files removed)."""
        found: list[dict] = []
        for rank in range(self.ctx.world_size):
            path = self.path(rank)
            if path.is_file():
                found += json.loads(path.read_text())
                path.unlink()
        return sorted(found, key=lambda entry: entry["image"])


def check_output_folder(cfg: EvalConfig, config_file: str, files: RowFiles) -> None:
    """Refuse a folder whose rows were made with settings that change the numbers; record ours.

    Without rows the folder is free (a run that failed before its first row leaves only its
    settings, which the next run replaces)."""
    out = Path(cfg.batch.out)
    path = out / config_file
    current = cfg.to_dict()
    has_rows = files.merged.exists() or bool(files.shard_paths())
    if has_rows and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}; remove it or choose another --out") from exc
        fixed = [name for name in current if name not in cfg.FREE_FIELDS]
        # A setting added after the rows were made counts as its default there (the rows' numbers
        # did not depend on it), so older folders still resume with the default; except the
        # LEGACY_VALUES, which count as the value those rows were made with.
        defaults = {**flat_defaults(type(cfg)), **cfg.LEGACY_VALUES}
        if stored.get("seed_protocol", 1) != SEED_PROTOCOL:
            raise SettingError(f"{out} holds rows seeded by an earlier protocol (per-image seeds from the image's path; "
                             f"now from its decoded pixels, protocol/seeds.py), so new rows would not match them; "
                             "use a new --out")
        changed = [f"{name} {_jsonable(stored.get(name, defaults.get(name)))!r} -> {_jsonable(current[name])!r}"
                   for name in fixed if _jsonable(stored.get(name, defaults.get(name))) != _jsonable(current[name])]
        if changed:
            raise SettingError(f"{out} holds rows made with other settings ({'; '.join(changed)}); "
                             "use a new --out, or the same settings to resume")
    elif has_rows:
        raise SettingError(f"{out} holds row files but no {config_file}; use a new --out")
    atomic_write_text(path, json.dumps({**_jsonable(current), "seed_protocol": SEED_PROTOCOL}, indent=2) + "\n")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def selected_items(cfg: Any, pair: ModelPair) -> list[ImageItem]:
    run = cfg.batch
    if is_gtsegs(run.data):  # no classes in the file: each image's label is the ViT's prediction
        with GtSegs(run.data) as gtsegs:
            items = [ImageItem(index=i, path=gtsegs_item_name(i), label=None) for i in range(len(gtsegs))]
        return select(items, limit=run.limit, subset_seed=run.subset_seed)
    label_map = read_label_map(run.label_map) if run.label_map else None
    items = list_items(run.data, pair.classifier.class_names, label_map)
    return select(items, limit=run.limit, subset_seed=run.subset_seed)


def prepare_run(cfg: Any, ctx: distributed.DistContext, config_file: str, files: RowFiles) -> None:
    """Rank 0 checks and records the output folder; every rank gets its verdict."""
    problem = None
    if ctx.is_main:
        try:
            data = Path(cfg.batch.data).expanduser()
            segmentation = getattr(cfg, "segmentation", None)  # fvit eval's; fvit certify has none
            if segmentation is not None and is_gtsegs(data):
                if not data.is_file():
                    raise InputError(f"segmentation file not found: {cfg.batch.data}")
            elif not data.is_dir():
                raise InputError(f"data folder not found: {cfg.batch.data} (expected DIR/<class>/<image files>"
                                 + (", or a gtsegs .mat file" if segmentation is not None else "") + ")")
            masks = segmentation.masks if segmentation is not None else None
            if masks is not None and not Path(masks).expanduser().is_dir():
                raise InputError(f"mask folder not found: {masks} (expected MASKS/<class>/<stem>.png)")
            check_output_folder(cfg, config_file, files)
        except (ValueError, OSError) as exc:
            problem = str(exc)
    problem = distributed.broadcast(ctx, problem)
    if problem:
        raise InputError(problem)


def start_run(cfg: Any, ctx: distributed.DistContext | None, config_file: str, files: RowFiles
              ) -> tuple[distributed.DistContext, ModelPair]:
    """What every batch run does first (its settings were checked when they were made): join the
    torchrun group (or run alone), check and record the output folder, load the models (hub
    downloads only with allow_download; HF_HUB_OFFLINE set by the user wins)."""
    ctx = ctx or distributed.init(cfg.batch.dist_backend)
    prepare_run(cfg, ctx, config_file, files)
    device = distributed.device_for(ctx, cfg.models.device)
    return ctx, cfg.models.load(device=device, allow_download=cfg.batch.allow_download)


def progress_bar(total: int, ctx: distributed.DistContext, what: str, enabled: bool):
    from tqdm.auto import tqdm

    desc = f"{what} rank {ctx.rank}/{ctx.world_size}" if ctx.is_distributed else what
    return tqdm(total=total, desc=desc, unit="row", position=ctx.rank, disable=not enabled, dynamic_ncols=True,
                smoothing=0.05)


def run_eval(cfg: EvalConfig, ctx: distributed.DistContext | None = None) -> EvalReport:
    """Evaluate this rank's shard of the images, append rows, and (rank 0) merge and summarise.

    Resumable: rows already in the output folder are skipped; see the module docstring.
    """
    start = time.perf_counter()
    run = cfg.batch
    files = eval_row_files(run.out)
    ctx, pair = start_run(cfg, ctx, CONFIG_FILE, files)
    cfg.explanation.check_model(pair.classifier.num_patches)
    for mode in (m for m in cfg.grid.modes if m != "vanilla"):
        for sigma in cfg.grid.sigmas:
            check_schedule(pair.denoiser, sigma, mode, cfg.smoothing.multistep_steps)
    items = selected_items(cfg, pair)
    grid = settings_grid(cfg.grid)
    attacks = {s: cfg.resolved_attack(s) for s in grid}  # resolved once per run
    done = files.done_keys()
    work = [(item, [s for s in grid if row_key(item.path, s) not in done]) for item in distributed.shard(items, ctx)]
    total = sum(len(settings) for _, settings in work)
    written = 0
    root = Path(run.data).expanduser()
    skipped = SkippedImages(run.out, ctx, run.strict)
    gtsegs = GtSegs(root) if is_gtsegs(root) else None
    with (gtsegs if gtsegs is not None else contextlib.nullcontext()), files.log(ctx.rank, ctx.world_size) as log, \
            progress_bar(total, ctx, "eval", run.progress) as bar:
        for item, settings in work:
            if not settings:
                continue
            try:
                segmented = gtsegs[gtsegs_index(item.path)] if gtsegs is not None else None
                evaluation = ImageEvaluation(cfg, pair, item, root, attacks, segmented)
            except ImageError as exc:
                skipped.record(root, item, exc)
                bar.update(len(settings))
                continue
            try:
                for row in evaluation.rows(settings):
                    log.append(json_line(row))
                    written += 1
                    bar.update(1)
            except FViTError as exc:  # say which image a user's problem is about; a bug stays a bug
                raise type(exc)(f"{root / item.path}: {exc}") from exc
    skipped.save()
    distributed.barrier(ctx)
    report = EvalReport(out=Path(run.out), rows_written=written, rows_total=None, rows_missing=None,
                        seconds=time.perf_counter() - start, rank=ctx.rank, world_size=ctx.world_size)
    if ctx.is_main:
        from fvit_core.batch.report import finish_eval

        report.skipped = skipped.collect()
        planned = {row_key(item.path, s) for item in items for s in grid}
        report.rows_total, report.rows_missing = finish_eval(cfg, files, planned, ctx, report.seconds,
                                                             skipped=report.skipped)
    return report
