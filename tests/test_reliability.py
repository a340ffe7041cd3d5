"""Reliability and security: bad parameters, broken models, offline, shared server, interrupted runs.

What each section proves is listed, with the counts, in docs/RELIABILITY.md. Everything runs on
the tiny pair (tests/tiny_pair.py) on the CPU; hostile *inputs* are fuzzed in tests/test_fuzz.py.
"""

from __future__ import annotations

import ast
import gc
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import conftest
from fvit_core.attacks import runner as attacks
from fvit_core.explanations import attention
from fvit_core.method import certify, monte_carlo
from fvit_core.cli import main as cli
from fvit_core.method import denoise
from fvit_core.data import images, pixels
from fvit_core import metrics
from fvit_core import models
from fvit_core.analysis import pipeline
from fvit_core.method import vanilla
from helpers import smooth
from fvit_core.models import ModelLoadError
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.analysis.pipeline import analyze

REPO = Path(__file__).resolve().parent.parent
FAST = dict(n_samples=4, steps=1, bootstrap=0, k=4, batch_size=64, noise_floor_estimator="independent")


def _image(seed: int = 0, h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).random((3, h, w), dtype=np.float32)


def _one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message


# =============================================================================================
# 1. Every public entry point refuses bad parameters with a ValueError a user can act on
# =============================================================================================


@dataclass
class Ctx:
    pair: models.ModelPair
    x: torch.Tensor
    img: np.ndarray

    @property
    def clf(self):
        return self.pair.classifier

    @property
    def den(self):
        return self.pair.denoiser


def _analyze(**change) -> Callable[[Ctx], Any]:
    return lambda c: analyze(c.img, AnalysisConfig.of(**{**FAST, **change}), pair=c.pair)


def _smooth(images_fn=lambda c: c.x, **change) -> Callable[[Ctx], Any]:
    return lambda c: smooth(c.pair, images_fn(c), **{"sigma": 0.25, "n_samples": 2, **change})


def _attack(name="pgd", x_fn=lambda c: c.x, **kw) -> Callable[[Ctx], Any]:
    return lambda c: attacks.run_attack(name, c.clf, x_fn(c), **{"params": {"steps": 1}, **kw})


def _explain(x_fn=lambda c: c.x, **kw) -> Callable[[Ctx], Any]:
    return lambda c: attention.explain(c.clf, x_fn(c), **kw)


def _eval_cfg(**change):
    from fvit_core.batch.config import EvalConfig
    return EvalConfig.of(data="data", out="out", **change)


def _certify_cfg(**change):
    from fvit_core.batch.config import CertifyConfig
    return CertifyConfig.of(data="data", out="out", **change)


W = np.random.default_rng(0).random(16)

# (id, call, message the user sees). Ids read "<entry point>: <what is wrong>".
BAD_PARAMETERS: list[tuple[str, Callable[[Ctx], Any], str]] = [
    # pipeline.analyze (AnalysisConfig.validate + image checks)
    ("analyze: sigma < 0", _analyze(sigma=-0.1), r"sigma must be a number in \[0.001, 4\]"),
    ("analyze: sigma nan", _analyze(sigma=float("nan")), r"sigma must be a number in \[0.001, 4\]"),
    ("analyze: zero samples", _analyze(n_samples=0), "n_samples must be a whole number"),
    ("analyze: one sample with a noise floor", _analyze(n_samples=1, sampling="independent"),
     "n_samples must be a whole number in 2..100,000"),
    ("analyze: odd antithetic samples", _analyze(n_samples=7), "antithetic sampling draws pairs: n_samples must be even"),
    ("analyze: one antithetic pair with a noise floor", _analyze(n_samples=2), "n_samples must be a whole number in 4..100,000"),
    ("analyze: k > patches", _analyze(k=17), "k=17 exceeds the model's 16 patches"),
    ("analyze: k = 0", _analyze(k=0), "k must be a whole number in 1..65,536"),
    ("analyze: eps < 0", _analyze(eps=-1.0), r"eps must be a number in \[0, 1,000\]"),
    ("analyze: eps over the range", _analyze(eps=1.0), "eps=1.0 is outside the allowed range"),
    ("analyze: eps as text", _analyze(eps="8/255"), "eps must be a number"),
    ("analyze: steps = 0", _analyze(steps=0), "steps must be a whole number in 1..100,000"),
    ("analyze: unknown attack", _analyze(attack="nope"), "unknown attack 'nope'; choose one of"),
    ("analyze: unknown method", _analyze(method="nope"), "unknown explanation method 'nope'; choose one of"),
    ("analyze: unknown mode", _analyze(mode="nope"), "unknown smoothing mode 'nope'; choose one of"),
    ("analyze: unknown head fusion", _analyze(head_fusion="median"), "unknown head fusion 'median'"),
    ("analyze: unknown image mode", _analyze(image_mode="stretch"), "unknown image mode 'stretch'; choose one of resize, center_crop, pad"),
    ("analyze: beta = 0", _analyze(beta=0.0), r"beta must be a number in \(0, 1\]"),
    ("analyze: confidence alpha 0.7", _analyze(confidence_alpha=0.7), r"confidence_alpha must be a number in \(0, 0.5\)"),
    ("analyze: renyi alpha inf", _analyze(renyi_alpha=float("inf")), r"renyi_alpha must be a number in \(1, 1,000\]"),
    ("analyze: batch size 0", _analyze(batch_size=0), "batch_size must be a whole number in 1..4,096"),
    ("analyze: bootstrap < 0", _analyze(bootstrap=-1), "bootstrap must be a whole number in 0..10,000"),
    ("analyze: multistep steps 0",
     _analyze(mode="multistep", multistep_steps=0), "multistep_steps must be a whole number in 1..1,000"),
    ("analyze: seed < 0", _analyze(seed=-1), r"seed must be a whole number in 0..2\*\*63-1"),
    ("analyze: seed as text", _analyze(seed="3"), "seed must be a whole number"),
    ("analyze: boolean as text", _analyze(shared_noise="false"), "shared_noise must be true or false"),
    ("analyze: attack params not a mapping",
     _analyze(attack_params=[1]), "attack_params must be a mapping of parameter names"),
    ("analyze: unknown attack parameter",
     _analyze(attack_params={"bogus": 1}), "attack 'pgd' has no parameter 'bogus'"),
    ("analyze: eps for an attack without one",
     _analyze(attack="gn", eps=0.1, steps=None), "attack 'gn' has no parameter 'eps'"),
    ("analyze: sigma beyond the bound", _analyze(sigma=500.0), r"sigma must be a number in \[0.001, 4\]"),
    # Round two (issue 15): upper bounds, degenerate values and huge numbers, refused before any work.
    ("analyze: sigma 1e-300", _analyze(sigma=1e-300), r"sigma must be a number in \[0.001, 4\].*got 1e-300"),
    ("analyze: sigma so small that t* = 0", _analyze(sigma=0.002), r"sigma=0.002 is below the denoiser's smallest noise "
     r"level: t\* would be 0"),
    ("analyze: multistep steps over t*", _analyze(mode="multistep", sigma=0.05, multistep_steps=500),
     r"multistep_steps=500 exceeds t\*=\d+ \(sigma 0.05\)"),
    ("analyze: multistep steps 1e9", _analyze(mode="multistep", multistep_steps=10**9),
     "multistep_steps must be a whole number in 1..1,000"),
    ("analyze: samples 1e12", _analyze(n_samples=10**12), "n_samples must be a whole number in 1..100,000"),
    ("analyze: samples and batch 1e6", _analyze(n_samples=10**6, batch_size=10**6),
     "batch_size must be a whole number in 1..4,096"),
    ("analyze: batch 1e6", _analyze(batch_size=10**6), "batch_size must be a whole number in 1..4,096"),
    ("analyze: 400-digit samples", _analyze(n_samples=10**400), "n_samples must be .* got an integer of 401 digits"),
    ("analyze: 400-digit attack steps", _analyze(steps=None, attack_params={"steps": 10**400}),
     "steps must be finite .* got an integer of 401 digits"),
    ("analyze: bootstrap 1e9", _analyze(bootstrap=10**9), "bootstrap must be a whole number in 0..10,000"),
    ("analyze: bootstrap x samples", _analyze(bootstrap=10_000, n_samples=10_000),
     r"bootstrap x n_samples = 10,000 x 10,000 is over the limit of 10,000,000"),
    ("analyze: renyi alpha 1e308", _analyze(renyi_alpha=1e308), r"renyi_alpha must be a number in \(1, 1,000\]"),
    ("analyze: a megabyte of text as seed", _analyze(seed="9" * 1_000_000), r"seed must be a whole number, got '9{56}\.\.\.$"),
    ("eval: samples 1e7", lambda c: _eval_cfg(n_samples=10**7), "n_samples must be a whole number in 1..100,000"),
    ("eval: one sample with a noise floor", lambda c: _eval_cfg(n_samples=1, sampling="independent"),
     "n_samples must be a whole number in 2..100,000"),
    ("eval: odd perturbation-test samples", lambda c: _eval_cfg(pt_samples=3), "pt_samples must be even and at least 2"),
    ("eval: sigma 1e-300", lambda c: _eval_cfg(sigmas=(1e-300,)), r"sigma must be a number in \[0.001, 4\]"),
    ("eval: 2,000 budgets", lambda c: _eval_cfg(eps=(0.01,) * 2000), "eps holds 2,000 values, over the limit"),
    ("eval: pt samples 1e9", lambda c: _eval_cfg(pt_samples=10**9), "pt_samples must be a whole number in 1..100,000"),
    ("eval: limit 0", lambda c: _eval_cfg(limit=0), "limit must be a whole number in 1..100,000,000"),
    ("certify: n 1e9", lambda c: _certify_cfg(n=10**9), "n must be a whole number in 1..1,000,000"),
    ("certify: check samples 1", lambda c: _certify_cfg(check_samples=1),
     "check_samples must be a whole number in 2..1,000,000"),
    ("certify: no radii", lambda c: _certify_cfg(radii=()), "give at least one value for radii"),
    ("certify: radius inf", lambda c: _certify_cfg(radii=(float("inf"),)), r"radii must be a number in \[0, 1,000\]"),
    ("analyze: image HWC",
     lambda c: analyze(c.img.transpose(1, 2, 0), AnalysisConfig.of(**FAST), pair=c.pair), r"image must be an array of shape \(3, H, W\)"),
    ("analyze: image 2-D",
     lambda c: analyze(c.img[0], AnalysisConfig.of(**FAST), pair=c.pair), r"image must be an array of shape \(3, H, W\)"),
    ("analyze: image 4 channels",
     lambda c: analyze(np.concatenate([c.img, c.img[:1]]), AnalysisConfig.of(**FAST), pair=c.pair),
     r"image must be an array of shape \(3, H, W\)"),
    ("analyze: image 0-255",
     lambda c: analyze(c.img * 255, AnalysisConfig.of(**FAST), pair=c.pair), r"image must be (finite numbers |float pixels )?in \[0, 1\]"),
    ("analyze: image uint8",
     lambda c: analyze((c.img * 255).astype(np.uint8), AnalysisConfig.of(**FAST), pair=c.pair),
     r"image must be (finite numbers |float pixels )?in \[0, 1\]"),
    ("analyze: image NaN",
     lambda c: analyze(c.img * np.nan, AnalysisConfig.of(**FAST), pair=c.pair),
     r"image must be (finite numbers |float pixels )?in \[0, 1\]"),
    ("analyze: image normalised",
     lambda c: analyze(c.img - 0.5, AnalysisConfig.of(**FAST), pair=c.pair), r"image must be (finite numbers |float pixels )?in \[0, 1\]"),
    ("settings: not an object", lambda c: AnalysisConfig.from_dict([1, 2]), "settings must be a JSON object"),
    ("settings: unknown name", lambda c: AnalysisConfig.from_dict({"sigmaa": 1}), "unknown settings sigmaa"),
    # smoothing.smooth / vanilla
    ("smooth: sigma < 0", _smooth(sigma=-1), r"sigma must be a number in \[0.001, 4\]"),
    ("smooth: zero samples", _smooth(n_samples=0), "n_samples must be a whole number >= 1"),
    ("smooth: fractional samples", _smooth(n_samples=2.5), "n_samples must be a whole number >= 1"),
    ("smooth: batch size 0", _smooth(batch_size=0), "batch_size must be a whole number in 1..4,096"),
    ("smooth: unknown mode", _smooth(mode="nope"), "unknown smoothing mode 'nope'"),
    ("smooth: unknown method", _smooth(method="nope"), "unknown explanation method 'nope'"),
    ("smooth: unknown head fusion", _smooth(head_fusion="nope"), "unknown head fusion 'nope'"),
    ("smooth: shared noise of the wrong shape", _smooth(noise=torch.zeros(3, 3, 32, 32)), "shared noise must be"),
    ("smooth: images 3-D", _smooth(lambda c: c.x[0]), r"images must be a batch of shape \(B, 3, H, W\)"),
    pytest.param("smooth: images outside [0, 1]", _smooth(lambda c: c.x + 2), r"\[0, 1\]",
                 ),
    pytest.param("smooth: uint8 images", _smooth(lambda c: (c.x * 255).to(torch.uint8)), r"float|\[0, 1\]",
                 ),
    ("vanilla: images outside [0, 1]", lambda c: vanilla.vanilla(c.pair, c.x + 2), r"pixels must be in \[0, 1\]"),
    # attacks.run_attack
    ("run_attack: unknown attack", _attack("nope"), "unknown attack"),
    ("run_attack: eps < 0", _attack(params={"eps": -1.0}), "eps=-1.0 is outside the allowed range"),
    ("run_attack: eps nan", _attack(params={"eps": float("nan")}), "eps must be finite"),
    ("run_attack: eps as text", _attack(params={"eps": "8/255"}), "eps must be a number"),
    ("run_attack: zero steps", _attack(params={"steps": 0}), "steps=0 is outside the allowed range"),
    ("run_attack: unknown parameter", _attack(params={"bogus": 1}), "has no parameter 'bogus'"),
    ("run_attack: params not a mapping", _attack(params=[1]), "params must be a mapping"),
    ("run_attack: eot_dds without a denoiser", _attack("eot_dds"), "pass denoiser="),
    ("run_attack: label out of range", _attack(labels=torch.tensor([10])), r"labels must lie in 0..9"),
    ("run_attack: float labels", _attack(labels=torch.tensor([1.0])), "labels must be 1 integer class indices"),
    ("run_attack: topk k > patches", _attack("topk", params={"k": 99, "steps": 1}), "k=99 exceeds the 16 patches"),
    ("run_attack: pixels outside [0, 1]", _attack(x_fn=lambda c: c.x + 2), r"pixels must be in \[0, 1\]"),
    ("run_attack: NaN pixels", _attack(x_fn=lambda c: c.x * float("nan")), r"pixels must be finite numbers in \[0, 1\], found NaN"),
    ("run_attack: uint8 pixels", _attack(x_fn=lambda c: (c.x * 255).to(torch.uint8)), r"pixels must be float pixels in \[0, 1\], got dtype torch.uint8"),
    ("run_attack: one image without a batch axis", _attack(x_fn=lambda c: c.x[0]), r"use x\[None\] for one image"),
    ("run_attack: empty batch", _attack(x_fn=lambda c: c.x[:0]), "with B >= 1"),
    pytest.param("run_attack: distorting image size", _attack(x_fn=lambda c: c.x[..., :16, :]),
                 "uniform rescale"),
    # attention.explain / layer_head_maps / capture_attention
    ("explain: unknown method", _explain(method="nope"), "unknown explanation method 'nope'"),
    ("explain: unknown head fusion", _explain(head_fusion="nope"), "unknown head fusion 'nope'"),
    ("explain: target out of range", _explain(target=10), r"target classes must be in 0..9"),
    ("explain: float target", _explain(target=1.5), "target must hold integer class indices"),
    ("explain: targets for another batch", _explain(target=[1, 2]), "target has 2 entries for a batch of 1"),
    ("explain: distorting image size", _explain(lambda c: c.x[..., :16, :]),
     r"expected pixels of shape \(B, 3, 32, 32\) or a uniform rescale"),
    ("explain: pixels outside [0, 1]", _explain(lambda c: c.x + 2), r"pixels must be in \[0, 1\]"),
    ("explain: NaN pixels", _explain(lambda c: c.x * float("nan")), "pixels must be finite numbers in \\[0, 1\\], found NaN or inf"),
    ("explain: uint8 pixels", _explain(lambda c: (c.x * 255).to(torch.uint8)), r"pixels must be float pixels in \[0, 1\], got dtype torch.uint8"),
    ("explain: empty batch", _explain(lambda c: c.x[:0]), "with B >= 1"),
    ("layer_head_maps: wrong size",
     lambda c: attention.layer_head_maps(c.clf, c.x[..., :8, :16]), r"expected pixels of shape"),
    ("capture_attention: layer out of range",
     lambda c: attention.capture_attention(c.clf, layers=[5]).__enter__(), "layer 5 out of range"),
    # certify.*
    ("lower_confidence_bound: alpha 0",
     lambda c: certify.lower_confidence_bound(5, 10, 0.0), r"alpha must be in \(0, 0.5\)"),
    ("lower_confidence_bound: n_a > n",
     lambda c: certify.lower_confidence_bound(11, 10, 0.01), "need whole numbers 0 <= n_a <= n"),
    ("lower_confidence_bound: n = 0", lambda c: certify.lower_confidence_bound(0, 0, 0.01), "need whole numbers"),
    ("predict: one class", lambda c: certify.predict([5], 0.01), r"per-class counts \(>= 2 classes\)"),
    ("predict: negative counts", lambda c: certify.predict([5, -1], 0.01), "negative counts"),
    ("predict: fractional counts", lambda c: certify.predict([1.5, 2.0], 0.01), "whole vote counts"),
    ("certify_counts: sigma < 0",
     lambda c: certify.certify_counts([5, 1], [5, 1], -1.0, 0.01), "sigma must be a positive"),
    ("certify_counts: class mismatch",
     lambda c: certify.certify_counts([5, 1], [5, 1, 0], 0.25, 0.01), "need the same classes"),
    ("certify_counts: no samples",
     lambda c: certify.certify_counts([5, 1], [0, 0], 0.25, 0.01), "certify needs n >= 1"),
    ("prediction_stability_bound: radius < 0",
     lambda c: certify.prediction_stability_bound(-1.0, 0.25, 2.0), "radius must be a finite L2 distance >= 0"),
    ("prediction_stability_bound: sigma 0",
     lambda c: certify.prediction_stability_bound(1.0, 0.0, 2.0), "sigma must be a positive"),
    ("prediction_stability_bound: alpha 0",
     lambda c: certify.prediction_stability_bound(1.0, 0.25, 0.0), "renyi_alpha must be a finite order > 0"),
    ("linf_from_l2: input_dim 0",
     lambda c: certify.linf_from_l2(1.0, 0), "input_dim must be the number of input values"),
    ("linf_from_l2: radius nan", lambda c: certify.linf_from_l2(float("nan"), 10), "radius must be a finite"),
    ("topk_certified_radius: k = 0",
     lambda c: certify.topk_certified_radius(W, 0, 0.5, 0.25), r"k must be an integer in 1..15"),
    ("topk_certified_radius: k = P",
     lambda c: certify.topk_certified_radius(W, 16, 0.5, 0.25), r"k must be an integer in 1..15"),
    ("topk_certified_radius: k + k0 > P",
     lambda c: certify.topk_certified_radius(W, 14, 0.5, 0.25), "use a smaller k or a larger beta"),
    ("topk_certified_radius: beta 0",
     lambda c: certify.topk_certified_radius(W, 4, 0.0, 0.25), r"beta must be in \(0, 1\]"),
    ("topk_certified_radius: sigma < 0",
     lambda c: certify.topk_certified_radius(W, 4, 0.5, -1.0), "sigma must be a positive"),
    ("topk_certified_radius: negative weights",
     lambda c: certify.topk_certified_radius(-W, 4, 0.5, 0.25), "non-negative finite attention weights"),
    ("topk_certified_radius: NaN weights",
     lambda c: certify.topk_certified_radius(W * np.nan, 4, 0.5, 0.25), "non-negative finite attention weights"),
    ("topk_certified_radius: alphas <= 1",
     lambda c: certify.topk_certified_radius(W, 4, 0.5, 0.25, alphas=[0.5]), "Renyi orders > 1"),
    ("standard_error: one sample",
     lambda c: monte_carlo.standard_error([1.0], [1.0], 1), "at least 2 for a standard error"),
    # metrics.*
    ("topk_indices: k = 0", lambda c: metrics.topk_indices(W, 0), r"k must be an integer in 1..16"),
    ("topk_indices: k > P", lambda c: metrics.topk_indices(W, 17), r"k must be an integer in 1..16"),
    ("topk_indices: k as bool", lambda c: metrics.topk_indices(W, True), r"k must be an integer in 1..16"),
    ("topk_indices: NaN weights", lambda c: metrics.topk_indices(W * np.nan, 2), "contains NaN or inf"),
    ("topk_indices: 3-D weights",
     lambda c: metrics.topk_indices(np.ones((2, 2, 2)), 1), r"must have shape \(P,\) or \(B, P\)"),
    ("topk_overlap: shapes differ", lambda c: metrics.topk_overlap(W, W[:8], 2), "must have the same shape"),
    ("overlap_curve: no ks", lambda c: metrics.overlap_curve(W, W, []), "ks is empty"),
    ("divergences: negative probabilities", lambda c: metrics.divergences([-0.5, 1.5], [0.5, 0.5]), "negative entries"),
    ("divergences: not summing to 1", lambda c: metrics.divergences([0.2, 0.2], [0.5, 0.5]), "must sum to 1"),
    ("divergences: renyi alpha < 0",
     lambda c: metrics.divergences([0.5, 0.5], [0.5, 0.5], renyi_alpha=-1), "renyi_alpha must be a finite number > 0"),
    ("divergences: shapes differ", lambda c: metrics.divergences([0.5, 0.5], [1 / 3] * 3), "must have the same shape"),
    # denoise.*
    ("timestep_for_sigma: sigma < 0",
     lambda c: denoise.timestep_for_sigma(c.den.alphas_cumprod, -1.0), "sigma must be a positive"),
    ("timestep_for_sigma: sigma nan",
     lambda c: denoise.timestep_for_sigma(c.den.alphas_cumprod, float("nan")), "sigma must be a positive"),
    ("timestep_for_sigma: sigma too large",
     lambda c: denoise.timestep_for_sigma(c.den.alphas_cumprod, 1000.0), "exceeds the denoiser's noise range"),
    ("multistep_denoise: zero steps",
     lambda c: denoise.multistep_denoise(c.den, c.x, 10, n_steps=0), "n_steps must be at least 1"),
    pytest.param("one_shot_denoise: t* beyond the schedule", lambda c: denoise.one_shot_denoise(c.den, c.x, 5000),
                 "t_star|timestep",
                 ),
    pytest.param("one_shot_denoise: negative t*", lambda c: denoise.one_shot_denoise(c.den, c.x, -1), "t_star|timestep",
                 ),
    pytest.param("resize_pixels: empty size", lambda c: pixels.resize_pixels(c.x, (0, 0)), "size",
                 ),
    # images.*
    ("load_image: not bytes, path or image",
     lambda c: images.load_image(12345), "pass bytes, a file path or a PIL image"),
    ("load_image: empty", lambda c: images.load_image(b""), "empty file"),
    ("load_image: over the byte limit", lambda c: images.load_image(b"abc", max_bytes=2), "over the limit of 2 bytes"),
    ("prepare_image: HWC array",
     lambda c: images.prepare_image(c.img.transpose(1, 2, 0), (8, 8)), r"shape \(3, H, W\)"),
    ("prepare_image: 0-255 floats",
     lambda c: images.prepare_image(c.img * 255, (8, 8)), r"image must be in \[0, 1\] \(got min"),
    ("prepare_image: uint8",
     lambda c: images.prepare_image((c.img * 255).astype(np.uint8), (8, 8)), r"image must be float pixels in \[0, 1\], got dtype uint8"),
    ("prepare_image: NaN",
     lambda c: images.prepare_image(c.img * np.nan, (8, 8)), r"image must be finite numbers in \[0, 1\], found NaN"),
    ("prepare_image: size 0", lambda c: images.prepare_image(c.img, (0, 8)), "size must be two positive integers"),
    ("prepare_image: fractional size",
     lambda c: images.prepare_image(c.img, (2.5, 3)), "size must be two positive integers"),
    ("prepare_image: size as text", lambda c: images.prepare_image(c.img, "32"), "size must be two positive integers"),
    ("prepare_image: unknown mode",
     lambda c: images.prepare_image(c.img, (8, 8), mode="stretch"), "mode must be one of resize, center_crop, pad"),
    ("to_uint8: 2-D array", lambda c: images.to_uint8(c.img[0]), r"shape \(3, H, W\)"),
    # models.load_*
    ("load_classifier: missing folder",
     lambda c: models.load_classifier("./no/such/folder"), "classifier folder not found"),
    ("load_classifier: unknown timm name", lambda c: models.load_classifier("not_a_model"), "unknown timm model"),
    ("load_classifier: not a ViT", lambda c: models.load_classifier("resnet18", random_weights=True), "is not a timm VisionTransformer"),
    ("load_classifier: timm name without downloads (random weights)",
     lambda c: models.load_classifier("vit_tiny_patch16_224"), r"is a timm model name: without downloading, its "
     r"weights would be random .*--allow-download"),
    ("load_pair: timm name without downloads",
     lambda c: models.load_pair("default", classifier="vit_tiny_patch16_224"), "its weights would be random"),
    ("load_classifier: missing .safetensors file",
     lambda c: models.load_classifier("/no/such/model.safetensors"), "weights file not found"),
    ("load_denoiser: missing folder", lambda c: models.load_denoiser("/no/such/folder"), "denoiser folder not found"),
    ("load_denoiser: hub id without permission",
     lambda c: models.load_denoiser("google/ddpm-cifar10-32"), "allow downloads"),
    ("load_pair: unknown pair", lambda c: models.load_pair("nope"), "unknown model pair 'nope'"),
    ("load_pair: unknown device", lambda c: models.check_device("banana"), "unknown device 'banana'"),
    ("load_pair: absent GPU", lambda c: models.check_device("cuda:7"), "CUDA is not available|does not exist"),
    ("create_vit: head re-initialisation",
     lambda c: models.create_vit("vit_tiny_patch16_224", num_classes=10, pretrained=True), "re-initialise the head"),
    ("resolve_model_dir: path traversal", lambda c: models.resolve_model_dir("../etc", REPO), "is not a model name"),
]


@pytest.fixture(scope="module")
def ctx(tiny_pair) -> Ctx:
    img = _image()
    return Ctx(pair=tiny_pair, x=torch.from_numpy(img)[None], img=img)


def _param_id(entry) -> str:
    return entry.values[0] if hasattr(entry, "values") else entry[0]


@pytest.mark.parametrize("name, call, message", BAD_PARAMETERS, ids=[_param_id(e) for e in BAD_PARAMETERS])
def test_entry_points_refuse_bad_parameters(ctx: Ctx, name: str, call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call(ctx)
    _one_line(str(info.value))


def test_the_audit_covers_every_listed_module() -> None:
    prefixes = {entry_id.split(":")[0] for entry_id in (_param_id(e) for e in BAD_PARAMETERS)}
    for needed in ("analyze", "smooth", "run_attack", "explain", "certify_counts", "topk_certified_radius",
                   "topk_overlap", "divergences", "timestep_for_sigma", "load_image", "prepare_image",
                   "load_classifier", "load_denoiser", "load_pair"):
        assert needed in prefixes, needed
    assert len(BAD_PARAMETERS) >= 120


def test_a_settings_file_with_wrong_types_fails_in_one_line_before_any_work(tmp_path, tiny_pair_dir, capsys) -> None:
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    for bad in ({"eps": "8/255"}, {"shared_noise": "false"}, {"config": 5}, {"attack_params": [1]}, {"seed": 1.5}):
        settings_file = tmp_path / "settings.json"
        settings_file.write_text(json.dumps(bad))
        assert cli.main(["analyze", str(image), "--config", str(settings_file)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fvit analyze: error: ") and len(err.splitlines()) == 1, err


# =============================================================================================
# 2. Results never hold NaN or infinity; a model producing them is named
# =============================================================================================


def _nan_copy(module: torch.nn.Module, names: str = "") -> torch.nn.Module:
    import copy

    broken = copy.deepcopy(module)
    with torch.no_grad():
        for name, param in broken.named_parameters():
            if names in name:
                param.fill_(float("nan"))
    return broken


@pytest.mark.parametrize("attack", ["pgd", "topk", "none"])
def test_classifier_with_nan_weights_is_named(tiny_pair, attack) -> None:
    pair = models.ModelPair(classifier=_nan_copy(tiny_pair.classifier), denoiser=tiny_pair.denoiser)
    steps = None if attack == "none" else 1
    with pytest.raises(ValueError, match="the classifier returned NaN or infinite logits for this image: its weights"):
        analyze(_image(), AnalysisConfig.of(**{**FAST, "attack": attack, "steps": steps}), pair=pair)


def test_classifier_with_an_infinite_bias_is_named(tiny_pair) -> None:
    import copy

    classifier = copy.deepcopy(tiny_pair.classifier)
    with torch.no_grad():
        classifier.vit.head.bias[3] = float("inf")
    pair = models.ModelPair(classifier=classifier, denoiser=tiny_pair.denoiser)
    with pytest.raises(ValueError, match="the classifier returned NaN or infinite logits"):
        analyze(_image(), AnalysisConfig.of(**FAST), pair=pair)


def test_denoiser_with_nan_weights_is_named(tiny_pair) -> None:
    import copy

    denoiser = copy.deepcopy(tiny_pair.denoiser)
    denoiser.unet = _nan_copy(denoiser.unet, "conv_in")
    pair = models.ModelPair(classifier=tiny_pair.classifier, denoiser=denoiser)
    with pytest.raises(ValueError, match="the denoiser returned NaN or infinite pixels"):
        analyze(_image(), AnalysisConfig.of(**FAST), pair=pair)
    # RS mode never calls the denoiser, so it still works.
    result = analyze(_image(), AnalysisConfig.of(**{**FAST, "mode": "rs"}), pair=pair)
    assert np.isfinite(result.fvit.clean.probs).all()


def test_the_sample_loop_names_a_nan_denoiser_after_its_first_batch(tiny_pair) -> None:
    """FaithfulViT.sample checks each denoised batch, so every caller (analyze, fvit eval and
    certify, the notebook API) names the denoiser, and stops at the first batch."""
    import copy

    from fvit_core.method.faithful_vit import FaithfulViT
    from fvit_core.runtime.strategy import Runtime

    denoiser = copy.deepcopy(tiny_pair.denoiser)
    denoiser.unet = _nan_copy(denoiser.unet, "conv_in")
    calls = []
    denoiser.unet.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    fvit = FaithfulViT(tiny_pair.classifier, denoiser, 0.25, runtime=Runtime(batch_size=2, parallel=False))
    with pytest.raises(ModelLoadError, match="the denoiser returned NaN or infinite pixels for the noisy copies"):
        fvit.sample(torch.rand(1, 3, 32, 32), 8, generator=torch.Generator().manual_seed(0))
    assert calls == [2]  # one batch of 2 of the 4 batches, then the error


def test_nan_weights_on_disk_are_refused_at_load_and_by_the_cli(tiny_pair_dir, tmp_path, capsys) -> None:
    from conftest import TINY_VIT_ARGS, make_tiny_vit

    folder = tmp_path / "nan_classifier"
    models.save_classifier(_nan_copy(make_tiny_vit(0), "blocks.1"), folder, model_args=TINY_VIT_ARGS)
    with pytest.raises(ModelLoadError, match="has NaN or infinite values in 'blocks.1"):
        models.load_classifier(folder)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(image)
    code = cli.main(["analyze", str(image), "--classifier", str(folder), "--denoiser", str(tiny_pair_dir / "denoiser"),
                     "--n-samples", "4", "--steps", "1", "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "NaN or infinite" in err, err
    assert not (tmp_path / "r.json").exists()


def test_json_refuses_non_finite_numbers(tiny_pair) -> None:
    result = analyze(_image(), AnalysisConfig.of(**FAST), pair=tiny_pair)
    result.vanilla.divergences["kl"] = float("nan")
    with pytest.raises(ValueError):
        result.dumps()  # allow_nan=False: even a bug elsewhere cannot write NaN into the JSON
    with pytest.raises(ValueError, match="non-finite value at result.vanilla.divergences.kl"):
        pipeline._check_finite(result)


@pytest.mark.parametrize("k", [8, 9, 14, 15, 16])
def test_every_valid_k_gives_a_result(tiny_pair, k) -> None:
    """k between P/2 and P used to fail after all the work: the top-k bound needs ranks up to
    k + k0 <= P, and a larger k certifies nothing (radius 0) instead of raising."""
    result = analyze(_image(), AnalysisConfig.of(**{**FAST, "k": k}), pair=tiny_pair)
    k0 = certify.topk_boundary_size(k, 0.5)
    radius = result.faithful.certified.topk_radius_l2
    assert radius == 0.0 if k + k0 > 16 else radius >= 0.0


# =============================================================================================
# 3. Model files: safetensors only, corrupted / truncated / mismatched files refused
# =============================================================================================


def _copy_pair(tiny_pair_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    clf, den = tmp_path / "classifier", tmp_path / "denoiser"
    shutil.copytree(tiny_pair_dir / "classifier", clf)
    shutil.copytree(tiny_pair_dir / "denoiser", den)
    return clf / "model.safetensors", den / "unet" / "diffusion_pytorch_model.safetensors"


def _rewrite(path: Path, change: Callable[[dict], dict]) -> None:
    from safetensors.torch import load_file, save_file

    save_file(change(load_file(path)), path, metadata={"format": "pt"})


def _drop_first(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != sorted(state)[0]}


def _add_key(state: dict) -> dict:
    return {**state, "bogus.weight": torch.zeros(2)}


def _widen(state: dict) -> dict:
    name = next(k for k in sorted(state) if state[k].ndim == 2)
    return {**state, name: torch.zeros(state[name].shape[0] + 1, state[name].shape[1])}


def _nan_all(state: dict) -> dict:
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}


BROKEN_WEIGHTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
                  "truncated|Unable to load|not a valid safetensors"),
    "empty": (lambda p: p.write_bytes(b""), "Unable to load|not a valid safetensors"),
    "garbage header": (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}  " + p.read_bytes()[24:]),
                       "Unable to load|not a valid safetensors"),
    "a pickle instead": (lambda p: p.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."),
                         "Unable to load|not a valid safetensors"),
    "missing tensor": (lambda p: _rewrite(p, _drop_first), "[Mm]issing key"),
    "unexpected tensor": (lambda p: _rewrite(p, _add_key), "[Uu]nexpected key"),
    "wrong shape": (lambda p: _rewrite(p, _widen), "size mismatch"),
    "NaN weights": (lambda p: _rewrite(p, _nan_all), "NaN or infinite values"),
}


@pytest.mark.parametrize("damage", list(BROKEN_WEIGHTS))
@pytest.mark.parametrize("which", ["classifier", "denoiser"])
def test_broken_weights_files_are_refused(tiny_pair_dir, tmp_path, which, damage) -> None:
    clf_file, den_file = _copy_pair(tiny_pair_dir, tmp_path)
    breaker, message = BROKEN_WEIGHTS[damage]
    breaker(clf_file if which == "classifier" else den_file)
    with pytest.raises(ModelLoadError, match=message) as info:
        if which == "classifier":
            models.load_classifier(clf_file.parent)
        else:
            models.load_denoiser(den_file.parent.parent)
    _one_line(str(info.value))


@pytest.mark.parametrize("layout", ["unet/ sub-folder", "flat"])
def test_denoiser_folder_with_only_a_pickle_is_refused_without_unpickling(tiny_pair_dir, tmp_path, monkeypatch,
                                                                        layout) -> None:
    from diffusers import UNet2DModel

    folder = tmp_path / "denoiser"
    shutil.copytree(tiny_pair_dir / "denoiser", folder)
    unet = UNet2DModel.from_pretrained(folder / "unet")
    shutil.rmtree(folder / "unet")
    weights_dir = folder / "unet" if layout != "flat" else folder
    unet.save_pretrained(weights_dir, safe_serialization=False)
    if layout == "flat":
        for item in (folder / "scheduler").iterdir():
            shutil.move(str(item), folder / item.name)
        (folder / "scheduler").rmdir()
    assert (weights_dir / "diffusion_pytorch_model.bin").is_file() and not list(weights_dir.glob("*.safetensors"))
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or pytest.fail("torch.load was called"))
    with pytest.raises(ModelLoadError, match="holds only pickled weights .*diffusion_pytorch_model.bin.* never loaded"):
        models.load_denoiser(folder)
    assert not unpickled


def test_classifier_folder_with_only_a_pickle_is_refused(tiny_pair_dir, tmp_path) -> None:
    folder = tmp_path / "classifier"
    shutil.copytree(tiny_pair_dir / "classifier", folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="model.safetensors is missing"):
        models.load_classifier(folder)


def test_invalid_noise_schedule_and_normalisation_are_refused(tiny_pair_dir, tmp_path) -> None:
    _copy_pair(tiny_pair_dir, tmp_path)
    config = tmp_path / "denoiser" / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "beta_end": 1.5}))
    with pytest.raises(ModelLoadError, match="noise schedule .* is invalid"):
        models.load_denoiser(tmp_path / "denoiser")
    config = tmp_path / "classifier" / "config.json"
    data = json.loads(config.read_text())
    data["pretrained_cfg"]["std"] = [0.2, 0.0, 0.2]
    config.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="std must be positive"):
        models.load_classifier(tmp_path / "classifier")


def _python_files() -> list[Path]:
    return sorted(p for folder in ("fvit_core", "app") for p in (REPO / folder).rglob("*.py"))


def _call_name(node: ast.Call) -> str:
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _unsafe_deserialisation(paths: list[Path], root: Path) -> list[str]:
    """Calls and imports that could unpickle: torch.load without weights_only=True, pickle-family
    modules, allow_pickle, read_pickle, and UNet/Model from_pretrained without use_safetensors=True."""
    unsafe_modules = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "_pickle"}
    problems = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(root)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}:{node.lineno} imports {a.name}" for a in node.names
                             if a.name.split(".")[0] in unsafe_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in unsafe_modules:
                problems.append(f"{where}:{node.lineno} imports from {node.module}")
            elif isinstance(node, ast.Call):
                name = _call_name(node)
                keywords = {k.arg: k.value for k in node.keywords}
                if name == "torch.load" or name.endswith(".torch.load"):
                    flag = keywords.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
                if name.split(".")[-1] in ("read_pickle", "load_pickle"):
                    problems.append(f"{where}:{node.lineno} {name}")
                flag = keywords.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{node.lineno} {name}(allow_pickle=...)")
                if name.endswith("from_pretrained"):
                    flag = keywords.get("use_safetensors")
                    if "UNet" in name or "Model" in name:
                        if not (isinstance(flag, ast.Constant) and flag.value is True):
                            problems.append(f"{where}:{node.lineno} {name} without use_safetensors=True")
    return problems


def test_no_unsafe_deserialisation_in_fvit_core_and_app() -> None:
    files = _python_files()
    assert len(files) > 20 and any(p.parts[-2] == "app" for p in files)
    assert _unsafe_deserialisation(files, REPO) == []


def test_the_scanner_catches_unsafe_code(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport torch\nx = torch.load('f')\ny = torch.load('f', weights_only=False)\n"
                   "ok = torch.load('f', weights_only=True)\nimport numpy as np\nz = np.load('f', allow_pickle=True)\n"
                   "from diffusers import UNet2DModel\nu = UNet2DModel.from_pretrained('x')\n"
                   "v = UNet2DModel.from_pretrained('x', use_safetensors=True)\nfrom joblib import load\n")
    assert sorted(_unsafe_deserialisation([bad], tmp_path)) == sorted([
        "bad.py:1 imports pickle", "bad.py:3 torch.load without weights_only=True",
        "bad.py:4 torch.load without weights_only=True", "bad.py:7 np.load(allow_pickle=...)",
        "bad.py:9 UNet2DModel.from_pretrained without use_safetensors=True", "bad.py:11 imports from joblib"])


# =============================================================================================
# 4. Models come from the models directory only (resolve_model_dir), hub only when asked
# =============================================================================================


@pytest.fixture
def models_dir(tmp_path, tiny_pair_dir) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(tiny_pair_dir / "classifier", root / "my-vit")
    shutil.copytree(tiny_pair_dir / "denoiser", root / "my-ddpm")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "config.json").write_text("{}")
    return root


def test_resolve_model_dir_accepts_plain_names(models_dir) -> None:
    assert models.resolve_model_dir("my-vit", models_dir) == (models_dir / "my-vit").resolve()
    assert models.load_classifier(models.resolve_model_dir("my-vit", models_dir)).num_classes == 10
    assert models.load_denoiser(models.resolve_model_dir("my-ddpm", models_dir)).num_train_timesteps == 1000


@pytest.mark.parametrize("name", ["", " ", ".", "..", "../secret", "my-vit/../../secret", "/etc", "/etc/passwd",
                                  str(Path("/tmp").resolve()), "..\\secret", "C:\\Windows", "~", "~/x", ".hidden",
                                  "my-vit/unet", "a\x00b", "missing", None, 5])
def test_resolve_model_dir_refuses_everything_else(models_dir, name) -> None:
    with pytest.raises(ModelLoadError, match="models directory|not a model name") as info:
        models.resolve_model_dir(name, models_dir)
    _one_line(str(info.value))


def test_resolve_model_dir_refuses_symlinks_out_of_the_directory(models_dir) -> None:
    (models_dir / "escape").symlink_to(models_dir.parent / "secret", target_is_directory=True)
    with pytest.raises(ModelLoadError, match="leads outside the models directory"):
        models.resolve_model_dir("escape", models_dir)
    inner = models_dir / "sneaky"
    shutil.copytree(models_dir / "my-vit", inner)
    (inner / "model.safetensors").unlink()
    (inner / "model.safetensors").symlink_to(models_dir.parent / "secret" / "config.json")
    with pytest.raises(ModelLoadError, match="links outside the models directory"):
        models.resolve_model_dir("sneaky", models_dir)
    deep = models_dir / "deep"
    shutil.copytree(models_dir / "my-ddpm", deep)
    (deep / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (deep / "unet" / "diffusion_pytorch_model.safetensors").symlink_to(models_dir.parent / "secret" / "config.json")
    with pytest.raises(ModelLoadError, match="links outside the models directory"):
        models.resolve_model_dir("deep", models_dir)
    (models_dir / "alias").symlink_to(models_dir / "my-vit", target_is_directory=True)  # inside: fine
    assert models.resolve_model_dir("alias", models_dir) == (models_dir / "my-vit").resolve()


def test_resolve_model_dir_needs_an_existing_directory(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        models.resolve_model_dir("x", tmp_path / "nope")


# =============================================================================================
# 5. Offline: HF_HUB_OFFLINE is set by the CLI and honoured; subprocesses are guarded too
# =============================================================================================


def test_cli_sets_offline_mode_when_downloads_are_not_asked_for(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert cli.main(["analyze", str(tmp_path / "missing.png")]) == 2
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert "cannot read" in capsys.readouterr().err


def test_allow_download_does_not_override_a_users_offline_setting(tiny_pair_dir, tmp_path, capsys) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest, as a user's environment would
    before = len(conftest.NETWORK_ATTEMPTS)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    code = cli.main(["analyze", str(image), "--allow-download", "--classifier", str(tiny_pair_dir / "classifier"),
                     "--denoiser", "google/ddpm-cifar10-32", "--n-samples", "4", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "HF_HUB_OFFLINE is set" in err and len(err.splitlines()) == 1, err
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert len(conftest.NETWORK_ATTEMPTS) == before


@pytest.mark.parametrize("value, offline", [("1", True), ("ON", True), ("yes", True), ("true", True), ("0", False),
                                            ("", False)])
def test_hub_offline_reads_the_same_values_as_huggingface_hub(monkeypatch, value, offline) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert models.hub_offline() is offline


def test_subprocesses_inherit_offline_mode_and_the_network_guard(tmp_path) -> None:
    code = ("import os, socket, sys\n"
            "print(os.environ.get('HF_HUB_OFFLINE'))\n"
            "s = socket.socket()\n"
            "try:\n    s.connect(('93.184.216.34', 80))\n"
            "except OSError as e:\n    print('blocked' if 'blocked' in str(e) else e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["1", "blocked"], done.stdout + done.stderr
    assert conftest.subprocess_network_attempts()  # recorded...
    conftest.clear_subprocess_network_attempts()  # ...and cleared: this attempt was on purpose


# =============================================================================================
# 6. Shared server: concurrency, determinism, bounded memory
# =============================================================================================

# 8 analyses that differ in everything a session can choose: seed, method, attack (incl. pgd and
# topk, which take the attack lock), mode and fusion.
CONCURRENT_CONFIGS = [
    dict(seed=0, method="raw", attack="pgd", mode="dds"),
    dict(seed=1, method="rollout", attack="topk", mode="dds"),
    dict(seed=2, method="grad_rollout", attack="fgsm", mode="rs", steps=None),
    dict(seed=3, method="gradcam", attack="pgd", mode="dds", head_fusion="max"),
    dict(seed=4, method="raw", attack="topk", mode="rs", head_fusion="min"),
    dict(seed=5, method="rollout", attack="none", mode="denoise-only", steps=None),
    dict(seed=6, method="raw", attack="eot_dds", mode="dds", attack_params={"n_eot": 2}),
    dict(seed=7, method="gradcam", attack="mifgsm", mode="multistep", multistep_steps=2, shared_noise=True),
]


def _config(i: int) -> AnalysisConfig:
    return AnalysisConfig.of(**{**FAST, "n_samples": 4, "bootstrap": 20, **CONCURRENT_CONFIGS[i]})


def _json_without_timing(result) -> str:
    data = result.to_json()
    data.pop("timing")
    return json.dumps(data)


def test_eight_concurrent_analyses_equal_sequential_ones(tiny_pair) -> None:
    from fvit_core.explanations.attention import _ACTIVE

    inputs = [_image(seed=10 + i) for i in range(8)]
    expected = [_json_without_timing(analyze(inputs[i], _config(i), pair=tiny_pair)) for i in range(8)]
    for order in (list(range(8)), [7, 3, 5, 1, 6, 0, 4, 2]):  # two rounds, threads started in different orders
        got: list[str | BaseException | None] = [None] * 8
        barrier = threading.Barrier(8)

        def work(i: int) -> None:
            try:
                barrier.wait(timeout=60)
                got[i] = _json_without_timing(analyze(inputs[i], _config(i), pair=tiny_pair))
            except BaseException as exc:  # noqa: BLE001 - reported below, with the thread's index
                got[i] = exc

        threads = [threading.Thread(target=work, args=(i,)) for i in order]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        for i in range(8):
            assert not isinstance(got[i], BaseException), f"analysis {i} raised {got[i]!r}"
            assert got[i] == expected[i], f"analysis {i} ({CONCURRENT_CONFIGS[i]}) differs when run concurrently"
    assert _ACTIVE.get() is None
    assert not tiny_pair.classifier.training and all(p.grad is None for p in tiny_pair.classifier.parameters())


@pytest.mark.slow
def test_same_seed_same_bytes_in_process_and_in_a_fresh_process(tiny_pair, tiny_pair_dir, tmp_path) -> None:
    """The whole JSON minus timing, bit for bit: after other work in this process (global RNGs and
    caches touched) and from a new `fvit analyze` process."""
    image_file = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(3).random((40, 36, 3)) * 255).astype(np.uint8)).save(image_file)
    settings = dict(classifier=str(tiny_pair_dir / "classifier"), denoiser=str(tiny_pair_dir / "denoiser"),
                    n_samples=6, steps=2, k=4, seed=11, bootstrap=30, attack="pgd", method="rollout")
    config = lambda: AnalysisConfig.of(**settings)  # noqa: E731 - fresh object each time
    pixels = images.load_image(image_file)
    first = _json_without_timing(analyze(pixels, config(), pair=tiny_pair))
    torch.manual_seed(1234), np.random.seed(99), random.seed(5)  # disturb every global RNG
    analyze(_image(1), AnalysisConfig.of(**{**FAST, "seed": 3}), pair=tiny_pair)
    assert _json_without_timing(analyze(pixels, config(), pair=tiny_pair)) == first
    out = tmp_path / "fresh.json"
    command = [sys.executable, "-m", "fvit_core.cli", "analyze", str(image_file),
               "--classifier", settings["classifier"], "--denoiser", settings["denoiser"], "--n-samples", "6",
               "--steps", "2", "--k", "4", "--seed", "11", "--method", "rollout", "--json", str(out),
               "--config", str(_settings_file(tmp_path, bootstrap=30))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fresh = json.loads(out.read_text())
    fresh.pop("timing")
    assert json.dumps(fresh) == first


def _settings_file(folder: Path, **values) -> Path:
    path = folder / "settings.json"
    path.write_text(json.dumps(values))
    return path


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hook_count(model) -> int:
    return sum(len(block.attn.attn_drop._forward_hooks) for block in model.vit.blocks)


def test_memory_stays_bounded_over_fifty_analyses(tiny_pair) -> None:
    def run(i: int) -> None:
        config = AnalysisConfig.of(**{**FAST, "n_samples": 4, "bootstrap": 20, "seed": i,
                                   **CONCURRENT_CONFIGS[i % 6], "multistep_steps": 2})
        result = analyze(_image(i % 5), config, pair=tiny_pair)
        assert np.isfinite(result.fvit.clean.probs).all()

    for i in range(12):  # warm-up: allocator pools, lazy imports, attack registries, hooks
        run(i)
    gc.collect()
    rss_before, objects_before, hooks_before = _rss_bytes(), len(gc.get_objects()), _hook_count(tiny_pair.classifier)
    for i in range(50):
        run(i)
    gc.collect()
    rss_growth = _rss_bytes() - rss_before
    object_growth = len(gc.get_objects()) - objects_before
    assert rss_growth < 30 * 2**20, f"RSS grew by {rss_growth / 2**20:.1f} MB over 50 analyses"
    assert object_growth < 2_000, f"{object_growth} more live Python objects after 50 analyses"
    assert _hook_count(tiny_pair.classifier) == hooks_before  # attention taps installed once, never per call


# =============================================================================================
# 7. Interrupted work: `fvit eval` and `fvit certify` killed (SIGKILL) at many points, restarted
# =============================================================================================


@pytest.fixture(scope="module")
def kill_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill_images")
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        (root / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _eval_args(images_root: Path, pair_dir: Path, out: Path) -> list[str]:
    # 6 images x (vanilla + dds) = 12 rows.
    return ["eval", "--data", str(images_root), "--out", str(out), "--classifier", str(pair_dir / "classifier"),
            "--denoiser", str(pair_dir / "denoiser"), "--eps", "8/255", "--mode", "vanilla,dds", "--method", "raw",
            "--n-samples", "4", "--pt-samples", "2", "--k", "4", "--steps", "1", "--no-progress", "--no-figures"]


def _certify_args(images_root: Path, pair_dir: Path, out: Path) -> list[str]:
    return ["certify", "--data", str(images_root), "--out", str(out), "--classifier", str(pair_dir / "classifier"),
            "--denoiser", str(pair_dir / "denoiser"), "--sigma", "0.25", "--n0", "4", "--n", "8", "--k", "4",
            "--no-progress", "--no-figures"]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(command: list[str], hook: str) -> None:
    """Runs in a forked child: install one kill hook, then run the command in-process."""
    from fvit_core.batch import store

    kind, _, arg = hook.partition(":")
    if kind in ("append", "midwrite"):
        real_append, calls = store.AppendLog.append, [0]

        def append(self, line: str) -> None:
            calls[0] += 1
            if kind == "midwrite" and calls[0] == int(arg):
                data = (line + "\n").encode()
                os.write(self._fd, data[: len(data) // 2])  # half a row reaches the disk
                os.fsync(self._fd)
                _die()
            real_append(self, line)
            if kind == "append" and calls[0] == int(arg):
                _die()

        store.AppendLog.append = append
    elif kind == "replace":  # killed between writing the temporary file and renaming it
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if Path(dst).name == arg:
                _die()
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    elif kind == "call":  # die at the start of the n-th call of module.attribute (a stage of the run)
        where, _, n = arg.rpartition(":")
        owner_name, _, attribute = where.rpartition(".")
        owner = _resolve(owner_name)
        real, calls = getattr(owner, attribute), [0]

        def call(*a, **k):
            calls[0] += 1
            if calls[0] == int(n):
                _die()
            return real(*a, **k)

        setattr(owner, attribute, call)
    sys.stdout = sys.stderr = io.StringIO()
    os._exit(cli.main(command))


def _resolve(dotted: str) -> Any:
    """A module, or a class inside one (``fvit_core.method.faithful_vit.FaithfulViT``)."""
    import importlib

    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _run(command: list[str], hook: str = "") -> int:
    process = multiprocessing.get_context("fork").Process(target=_child, args=(command, hook))
    process.start()
    process.join(240)
    assert not process.is_alive(), "the command hung"
    return process.exitcode


def _complete_rows(path: Path, header: bool) -> list[str]:
    from fvit_core.batch.store import complete_lines

    lines = complete_lines(path)
    return lines[1:] if header and lines else lines


def _assert_no_corrupt_outputs(out: Path, reference: Path) -> None:
    """Every visible file is complete: JSON parses, CSV/TSV/Markdown have the reference's header."""
    for path in out.iterdir():
        if path.name.startswith(".") or path.is_dir():
            continue  # temporary files of an interrupted atomic write; never read
        text = path.read_text()
        if path.suffix == ".json":
            json.loads(text)
        elif path.suffix in (".csv", ".md", ".tsv") and path.name not in ("certify.tsv",):
            assert text.endswith("\n"), path.name
            assert text.splitlines()[0] == (reference / path.name).read_text().splitlines()[0], path.name
        elif path.suffix == ".jsonl" or path.name == "certify.tsv":
            pass  # append logs: checked row by row by the caller (a partial last line is by design)


def _without(obj, *names):
    if isinstance(obj, dict):
        return {k: _without(v, *names) for k, v in obj.items() if k not in names}
    if isinstance(obj, list):
        return [_without(v, *names) for v in obj]
    return obj


@dataclass
class KillCase:
    hook: str
    killed: bool  # whether this hook fires before the run ends


EVAL_KILLS = [KillCase("append:1", True), KillCase("append:3", True), KillCase("midwrite:2", True),
              KillCase("append:5", True), KillCase("replace:rows.jsonl", True), KillCase("replace:summary.md", True),
              KillCase("replace:summary.json", True), KillCase("replace:run_info.json", True)]
CERTIFY_KILLS = [KillCase("append:1", True), KillCase("midwrite:2", True), KillCase("append:2", True),
                 KillCase("replace:certify.tsv", True), KillCase("replace:certified_accuracy.md", True),
                 KillCase("replace:run_info.json", True)]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "certify"])
def test_sigkill_at_every_kill_point_loses_and_repeats_nothing(command, kill_images, tiny_pair_dir, tmp_path) -> None:
    """One output folder killed at each kill point in turn (rows 1, 3, 5, half a row, the merge,
    each summary file), restarted after every kill, checked after every kill, compared at the end
    with an uninterrupted run."""
    make_args = _eval_args if command == "eval" else _certify_args
    kills = EVAL_KILLS if command == "eval" else CERTIFY_KILLS
    rows_name, header = ("rows.jsonl", False) if command == "eval" else ("certify.tsv", True)
    reference = tmp_path / "reference"
    assert _run(make_args(kill_images, tiny_pair_dir, reference)) == 0
    ref_rows = _complete_rows(reference / rows_name, header)
    assert len(ref_rows) == (12 if command == "eval" else 6)
    key = _row_key(command)
    ref_by_key = {key(r): _row_value(command, r) for r in ref_rows}

    out = tmp_path / "killed"
    args = make_args(kill_images, tiny_pair_dir, out)
    for case in kills:
        code = _run(args, case.hook)
        assert code == (-signal.SIGKILL if case.killed else 0), f"{case.hook}: exit code {code}"
        rows = _complete_rows(out / rows_name, header)
        keys = [key(r) for r in rows]
        assert len(keys) == len(set(keys)), f"{case.hook}: duplicated rows"
        assert all(_row_value(command, r) == ref_by_key[key(r)] for r in rows), f"{case.hook}: a row differs"
        _assert_no_corrupt_outputs(out, reference)
    assert _run(args) == 0  # the final restart
    rows = _complete_rows(out / rows_name, header)
    assert [_row_value(command, r) for r in rows] == [_row_value(command, r) for r in ref_rows]  # same rows, same order
    summary = "summary.json" if command == "eval" else "certified_accuracy.json"
    timing = ("seconds", "seconds_per_image")
    assert _without(json.loads((out / summary).read_text()), *timing) == \
        _without(json.loads((reference / summary).read_text()), *timing)
    # What a kill between writing and renaming leaves: hidden temporary files, never read, at most
    # one per kill (files.atomic_write does not clean them up on the next run).
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert len(leftovers) <= len(kills) and all(re.fullmatch(r"\.[\w.-]+\.tmp(\.\w+)?", n) for n in leftovers), leftovers


def _row_key(command: str) -> Callable[[str], Any]:
    if command == "eval":
        from fvit_core.batch.evaluate import key_of_row

        return lambda line: key_of_row(json.loads(line))
    from fvit_core.batch.certification import COLUMNS

    return lambda line: line.split("\t")[COLUMNS.index("image")]


def _row_value(command: str, line: str) -> Any:
    if command == "eval":
        return _without(json.loads(line), "seconds")
    from fvit_core.batch.certification import COLUMNS

    return [f for i, f in enumerate(line.split("\t")) if i != COLUMNS.index("time")]  # Cohen's wall-clock column


# The stages of an eval run and how often each is entered for the 12 rows of _eval_args (6 images:
# one model load, one attack each, clean, attacked and perturbation-test smoothing each).
RUN_STAGES: tuple[tuple[str, int], ...] = (
    ("fvit_core.models.pairs.load_pair", 1), ("fvit_core.batch.evaluate.run_attack", 6),
    ("fvit_core.method.faithful_vit.FaithfulViT.sample", 18), ("fvit_core.batch.store.AppendLog.append", 12),
)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_repeats_nothing(kill_images, tiny_pair_dir, tmp_path) -> None:
    """Kills at seeded random moments of a run (model loading, attacks, smoothing, writing): the
    n-th entry into a seeded random stage, so each kill lands where it was drawn whatever the
    machine's speed. Each in a fresh folder, each followed by a restart that must complete the
    work."""
    reference = tmp_path / "reference"
    assert _run(_eval_args(kill_images, tiny_pair_dir, reference)) == 0
    ref_rows = [_row_value("eval", r) for r in _complete_rows(reference / "rows.jsonl", False)]
    rng = random.Random(7)
    moments = [(stage, rng.randint(1, count)) for stage, count in rng.sample(RUN_STAGES, len(RUN_STAGES))]
    outcomes, progress = [], []
    for attempt, (stage, n) in enumerate(moments):
        out = tmp_path / f"killed{attempt}"
        args = _eval_args(kill_images, tiny_pair_dir, out)
        outcomes.append(_run(args, f"call:{stage}:{n}"))
        rows = _complete_rows(out / "rows.jsonl", False) if (out / "rows.jsonl").exists() else []
        assert len({_row_key("eval")(r) for r in rows}) == len(rows)
        assert all(_row_value("eval", r) in ref_rows for r in rows)
        progress.append(len(rows))
        assert _run(args) == 0
        assert [_row_value("eval", r) for r in _complete_rows(out / "rows.jsonl", False)] == ref_rows
    assert outcomes == [-signal.SIGKILL] * len(moments), (moments, outcomes)  # every kill landed mid-run...
    assert len(set(progress)) >= 2, (moments, progress)  # ...at different stages of the work
