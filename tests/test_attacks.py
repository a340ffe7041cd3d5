"""Attack registry: every attack stays in [0, 1] and in budget, is seeded, and validates input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fvit_core import models
from fvit_core.attacks.ours import AttackContext, budget_excess, project_to_budget, topk_mask
from fvit_core.attacks.runner import BUDGET_ATOL, BUILDERS, run_attack
from fvit_core.attacks.settings import AttackSettings
from fvit_core.attacks.specs import ATTACKS, AttackSpec, ParamSpec, get_attack
from fvit_core.explanations.attention import explain

# Small budgets keep every attack well under a second on 2 CPU cores.
FAST_PARAMS: dict[str, dict] = {
    "none": {},
    "fgsm": {},
    "pgd": {"steps": 2},
    "pgdl2": {"steps": 2},
    "cw": {"steps": 5},
    "deepfool": {"steps": 3},
    "apgd": {"steps": 3},
    "autoattack": {"version": "fast"},
    "square": {"n_queries": 20},
    "mifgsm": {"steps": 2},
    "eotpgd": {"steps": 2, "eot_iter": 1},
    "gn": {},
    "topk": {"steps": 2},
    "eot_dds": {"steps": 1, "n_eot": 2},
}
RANDOM_ATTACKS = ("pgd", "pgdl2", "gn", "eotpgd", "square", "eot_dds")


@pytest.fixture(scope="module")
def model() -> models.PixelViT:
    """timm's random init: near-uniform attention, but a fragile classifier (attacks succeed)."""
    torch.manual_seed(0)
    vit = models.create_vit(
        "vit_tiny_patch16_224", num_classes=10,
        model_args=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    )
    return models.PixelViT(vit, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def denoiser() -> models.Denoiser:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(1)
    unet = UNet2DModel(
        sample_size=32, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return models.Denoiser(
        unet=unet, alphas_cumprod=DDPMScheduler(num_train_timesteps=1000).alphas_cumprod,
        num_train_timesteps=1000, sample_size=32,
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


# ---------------------------------------------------------------------------------------------
# Registry shape
# ---------------------------------------------------------------------------------------------


def test_registry_holds_the_required_attacks() -> None:
    required = {"none", "fgsm", "pgd", "pgdl2", "cw", "deepfool", "apgd", "autoattack", "square",
                "mifgsm", "eotpgd", "gn", "topk", "eot_dds"}
    assert required <= set(ATTACKS)
    assert set(FAST_PARAMS) == set(ATTACKS), "add fast test parameters for every new attack"


@pytest.mark.parametrize("name", list(ATTACKS))
def test_specs_are_well_formed(name: str) -> None:
    spec = ATTACKS[name]
    assert isinstance(spec, AttackSpec) and spec.name == name and spec.norm in ("Linf", "L2", "none")
    assert "[0, 1]" in spec.description and spec.label
    for p in spec.params:
        assert isinstance(p, ParamSpec) and p.kind in ("float", "int", "choice", "bool")
        assert p.validate(p.default) == p.default
        if p.kind in ("float", "int"):
            assert p.min <= p.default <= p.max and p.step > 0
        if p.kind == "choice":
            assert p.default in p.choices
    if spec.norm in ("Linf", "L2") and name not in ("cw", "deepfool"):
        assert spec.budget(spec.defaults()) is not None


def test_linf_step_follows_the_budget_in_the_registry() -> None:
    """alpha = eps / 5 is the registry's rule: run_attack, fvit analyze and fvit eval all get it."""
    assert ATTACKS["pgd"].resolve({"eps": 16 / 255})["alpha"] == pytest.approx(16 / 255 / 5)
    assert ATTACKS["pgd"].resolve({"eps": 16 / 255, "alpha": 1 / 255})["alpha"] == 1 / 255  # given: kept
    for name in ("mifgsm", "eotpgd", "topk", "eot_dds"):
        assert ATTACKS[name].resolve({"eps": 4 / 255})["alpha"] == pytest.approx(4 / 255 / 5), name
    assert ATTACKS["pgdl2"].resolve({"eps": 1.0})["alpha"] == 0.1  # the rule is Linf's; L2 keeps its default
    # The analysis settings an attack follows when its own parameter is not given.
    follow = {"sigma": 0.5, "k": 4, "method": "rollout", "head_fusion": "max"}
    assert AttackSettings(name="eot_dds").arguments(follow) == {"sigma": 0.5}
    assert AttackSettings(name="topk", eps=2 / 255, params={"k": 2}).arguments(follow) == {
        "k": 2, "eps": 2 / 255, "method": "rollout", "head_fusion": "max"}
    with pytest.raises(ValueError, match="no parameter 'eps'"):
        AttackSettings(name="cw", eps=8 / 255).arguments()
    assert AttackSettings(name="cw", eps=8 / 255, params={"std": 0.1}).arguments(strict=False) == {}
    resolved = AttackSettings(name="topk", eps=2 / 255).resolve(follow)
    assert resolved.params["alpha"] == pytest.approx(2 / 255 / 5) and resolved.seed_parts == ("topk", 2 / 255, None,
                                                                                              "rollout")


def test_run_attack_uses_the_derived_step(tiny_vit) -> None:
    """run_attack("pgd", params={"eps": 16/255}) steps by 3.2/255, not the default 1.6/255: one
    step from a fixed start moves each pixel by at most alpha."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    one_step = run_attack("pgd", tiny_vit, x, params={"eps": 16 / 255, "steps": 1, "random_start": False}, seed=0)
    moved = float((one_step - x).abs().max())
    assert moved == pytest.approx(16 / 255 / 5, abs=1e-6)


def test_paper_pgd_defaults() -> None:
    d = ATTACKS["pgd"].defaults()
    assert d == {"eps": 8 / 255, "alpha": 8 / 255 / 5, "steps": 10, "random_start": True}
    assert ATTACKS["pgd"].param("eps").display_scale == 255
    assert ATTACKS["pgdl2"].defaults()["eps"] == 0.5
    assert ATTACKS["eot_dds"].needs_denoiser and not ATTACKS["pgd"].needs_denoiser


# ---------------------------------------------------------------------------------------------
# Every attack: shape, range, budget
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_output_in_range_and_budget(name, model, denoiser, images) -> None:
    spec = ATTACKS[name]
    x_adv = run_attack(name, model, images, params=FAST_PARAMS[name], denoiser=denoiser, seed=0)
    assert x_adv.shape == images.shape and x_adv.dtype == images.dtype
    assert not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    params = spec.resolve(FAST_PARAMS[name])
    eps = spec.budget(params)
    delta = (x_adv - images).flatten(1)
    if spec.norm == "Linf" and eps is not None:
        assert float(delta.abs().max()) <= eps + BUDGET_ATOL
    if spec.norm == "L2" and eps is not None:
        assert float(delta.norm(dim=1).max()) <= eps + BUDGET_ATOL
    if name == "none":
        assert torch.equal(x_adv, images)


def test_zero_budget_returns_the_clean_image(model, images) -> None:
    assert torch.equal(run_attack("pgd", model, images, params={"eps": 0.0}, seed=0), images)


def test_pgd_reduces_accuracy_and_increases_loss(model) -> None:
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = _predict(model, x)
    x_adv = run_attack("pgd", model, x, labels, seed=0)
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), labels)
        adv_loss = F.cross_entropy(model(x_adv), labels)
    assert adv_loss > clean_loss + 0.1
    accuracy = float((_predict(model, x_adv) == labels).float().mean())
    assert accuracy < 0.5  # clean accuracy against the model's own predictions is 1


def test_topk_attack_moves_attention_off_the_clean_topk(tiny_vit, images) -> None:
    model, k = tiny_vit, 4  # conftest's ViT: attention far from uniform
    clean = explain(model, images)
    mask = topk_mask(clean.attention, k)
    x_adv = run_attack("topk", model, images, params={"k": k, "steps": 10}, seed=0)
    adv = explain(model, x_adv)
    clean_mass = (clean.attention * mask).sum(dim=1)
    adv_mass = (adv.attention * mask).sum(dim=1)
    assert bool((adv_mass <= clean_mass + 1e-6).all())
    assert float(adv_mass.mean()) < float(clean_mass.mean()) - 0.2  # measured: 0.57 -> 0.16
    assert torch.equal(adv.logits.argmax(1), clean.logits.argmax(1))  # the label is kept


def test_topk_mask_breaks_ties_by_lower_index() -> None:
    w = torch.tensor([[0.1, 0.3, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25]])
    assert topk_mask(w, 2).tolist() == [[0, 1, 1, 0], [1, 1, 0, 0]]


def test_eot_dds_restores_denoiser_mode(model, denoiser, images) -> None:
    denoiser.unet.train()
    try:
        run_attack("eot_dds", model, images[:1], params=FAST_PARAMS["eot_dds"], denoiser=denoiser, seed=0)
        assert denoiser.unet.training
    finally:
        denoiser.unet.eval()


def _five_class_model() -> models.PixelViT:
    torch.manual_seed(4)
    vit = models.create_vit(
        "vit_tiny_patch16_224", num_classes=5,
        model_args=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    )
    return models.PixelViT(vit, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_autoattack_takes_n_classes_from_the_model(images) -> None:
    model = _five_class_model()
    for version in ("standard", "plus"):  # built, not run: they are slow (spec description)
        params = ATTACKS["autoattack"].resolve({"version": version})
        attack = BUILDERS["autoattack"](AttackContext(model, params, None, 0))
        assert attack.n_classes == 5
        assert all(getattr(a, "n_target_classes", 4) == 4 for a in attack._autoattack.attacks)
    # At this tiny budget APGD-CE fools neither image, so APGD-T runs over the other 4 classes
    # (torchattacks' default of 10 classes would index past the logits).
    eps = 0.02 / 255
    x_adv = run_attack("autoattack", model, images[:2], params={"eps": eps}, seed=0)
    assert float((x_adv - images[:2]).abs().max()) <= eps + BUDGET_ATOL


# ---------------------------------------------------------------------------------------------
# Reproducibility and side effects
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RANDOM_ATTACKS)
def test_same_seed_same_output_different_seed_differs(name, model, denoiser, images) -> None:
    run = lambda seed: run_attack(name, model, images, params=FAST_PARAMS[name], denoiser=denoiser, seed=seed)
    first = run(7)
    assert torch.equal(first, run(7))
    assert not torch.equal(first, run(8))


def test_global_rng_untouched(model, images) -> None:
    state = torch.get_rng_state()
    run_attack("pgd", model, images, params={"steps": 1}, seed=0)
    run_attack("apgd", model, images, params={"steps": 1}, seed=0)  # APGD reseeds the global RNG
    assert torch.equal(state, torch.get_rng_state())


def test_no_seed_draws_fresh_noise(model, images) -> None:
    assert not torch.equal(run_attack("gn", model, images), run_attack("gn", model, images))


def test_works_under_inference_mode(model, images) -> None:
    with torch.inference_mode():
        x = images.clone()
        labels = _predict(model, x)
        x_adv = run_attack("pgd", model, x, labels, params={"steps": 2}, seed=0)
        x_topk = run_attack("topk", model, x, params={"steps": 1}, seed=0)
    assert float((x_adv - images).abs().max()) > 0
    assert float((x_topk - images).abs().max()) <= 8 / 255 + BUDGET_ATOL


@pytest.mark.parametrize("name", ["pgd", "cw", "deepfool"])
def test_model_mode_and_param_grads_restored(name, model, images) -> None:
    model.train()
    model.vit.head.eval()  # a mixed state must come back exactly
    try:
        run_attack(name, model, images[:2], params=FAST_PARAMS[name], seed=0)
        assert model.training and model.vit.blocks[0].training and not model.vit.head.training
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters())  # CW / DeepFool call backward()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("pgd", {"eps": 1.0}, "outside the allowed range"),
        ("pgd", {"eps": -0.1}, "/255"),
        ("pgd", {"steps": 0}, "steps=0"),
        ("pgd", {"steps": 2.5}, "whole number"),
        ("pgd", {"steps": True}, "must be a number"),
        ("pgd", {"eps": math.nan}, "finite"),
        ("pgd", {"random_start": 1}, "true or false"),
        ("pgd", {"epsilon": 0.1}, "parameters: eps, alpha, steps, random_start"),
        ("apgd", {"loss": "mse"}, "one of ce, dlr"),
        ("autoattack", {"version": "quick"}, "fast, standard"),
        ("eot_dds", {"sigma": 0.0}, "outside the allowed range"),
    ],
)
def test_bad_params_raise_value_error(name, params, message, model, denoiser, images) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run_attack(name, model, images, params=params, denoiser=denoiser, seed=0)


def test_out_of_range_message_states_the_range_in_display_units() -> None:
    with pytest.raises(ValueError) as info:
        ATTACKS["pgd"].resolve({"eps": 100 / 255})
    assert "shown as 100/255" in str(info.value) and "0..64 /255" in str(info.value)


def test_integer_valued_floats_and_numpy_values_are_accepted() -> None:
    import numpy as np

    resolved = ATTACKS["pgd"].resolve({"steps": 3.0, "eps": np.float32(4 / 255), "random_start": np.bool_(False)})
    assert resolved["steps"] == 3 and isinstance(resolved["steps"], int)
    assert resolved["random_start"] is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "pgd3"}, "known attacks"),
        ({"name": "eot_dds"}, "denoiser"),
        ({"x": torch.rand(3, 32, 32)}, "shape"),
        ({"x": torch.rand(1, 3, 32, 32) * 2}, r"\[0, 1\]"),
        ({"x": torch.randint(0, 255, (1, 3, 32, 32))}, "float"),
        ({"labels": torch.tensor([0, 1])}, "integer class indices"),
        ({"labels": torch.tensor([10])}, "0..9"),
        ({"name": "topk", "params": {"k": 17}}, "16 patches"),
    ],
)
def test_bad_inputs_raise_value_error(kwargs, message, model) -> None:
    call = {"name": "pgd", "x": torch.rand(1, 3, 32, 32), "params": {"steps": 1}} | kwargs
    with pytest.raises(ValueError, match=message):
        run_attack(call["name"], model, call["x"], call.get("labels"), call["params"], seed=0)


def test_get_attack_unknown_name() -> None:
    with pytest.raises(ValueError, match="known attacks: none, fgsm"):
        get_attack("nope")


# ---------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------


def test_projection_linf_and_l2() -> None:
    x = torch.full((2, 3, 4, 4), 0.5)
    far = x + torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    linf = project_to_budget(far, x, norm="Linf", eps=0.1)
    assert float((linf - x).abs().max()) <= 0.1 + BUDGET_ATOL and budget_excess(linf, x, norm="Linf", eps=0.1) <= BUDGET_ATOL
    l2 = project_to_budget(far, x, norm="L2", eps=0.3)
    assert float((l2 - x).flatten(1).norm(dim=1).max()) <= 0.3 + BUDGET_ATOL
    inside = x + 0.01
    assert torch.allclose(project_to_budget(inside, x, norm="L2", eps=0.3), inside)
    assert float(project_to_budget(far, x, norm="none", eps=None).max()) <= 1.0


@pytest.mark.parametrize("eps, steps, random_start", [(8 / 255, 10, True), (2 / 255, 3, False), (16 / 255, 4, True)])
def test_pgd_is_torchattacks_pgd_image_for_image(tiny_vit, eps, steps, random_start):
    """The registry's PGD is a direct loop (no torchattacks import for the default attack) with
    torchattacks.PGD's algorithm: the same seed gives the same attacked images, bit for bit."""
    import torchattacks

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = run_attack("pgd", tiny_vit, x, params={"eps": eps, "steps": steps, "random_start": random_start}, seed=5)
    labels = tiny_vit(x).argmax(-1)
    reference = torchattacks.PGD(tiny_vit, eps=eps, alpha=eps / 5, steps=steps, random_start=random_start)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        expected = reference(x, labels)
    assert torch.equal(ours, expected)
    assert float((ours - x).abs().max()) <= eps + 1e-6 and not torch.equal(ours, x)


def test_the_default_attack_does_not_import_torchattacks(tmp_path):
    import subprocess
    import sys

    code = ("import sys, torch\nfrom fvit_core.attacks.runner import run_attack\nfrom fvit_core.models import load_pair\n"
            "vit = load_pair('default').classifier\n"
            "run_attack('pgd', vit, torch.rand(1, 3, 32, 32), seed=0)\n"
            "print('torchattacks' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
