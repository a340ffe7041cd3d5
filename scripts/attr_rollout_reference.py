"""Compare fvit's attr_rollout with Xu et al.'s reference implementation on the same weights.

The reference (github.com/yxheartipp/attr-rollout, "Official implementation of Attribution
Rollout", compared at commit 588c8234fd17fd97a1871e55305e93dd867bf769) is NOT part of this
project: extract it anywhere (it needs einops) and pass its root directory. This script fetches
nothing; it imports the reference's own code unchanged:

- ``baselines/ViT/ViT_ig.py`` (VisionTransformer, with the per-block exit logits ``get_ig``) and
  ``baselines/ViT/ViT_explanation_generator.py`` (``IG.generate_ig``: per block the max over
  heads of A * grad * (1/m) sum(alpha)) are imported as modules;
- ``compute_rollout_attention`` and its ``_max`` / ``_min`` variants are taken from
  ``baselines/ViT/generate_visualizations.py``, the script the README runs for ``--method
  attr_rollout`` (read from the file by name: importing the whole script needs cv2, h5py and the
  LRP models, none of which the three functions use).

The only adaptation is the device: the reference calls ``.cuda()`` on its inputs, which this
script turns into a no-op on CPU (``torch.Tensor.cuda`` returns the tensor itself).

    git clone https://github.com/yxheartipp/attr-rollout /tmp/attr_ref/ref   # outside the project
    pip install --target /tmp/attr_ref/deps einops
    PYTHONPATH=/tmp/attr_ref/deps python scripts/attr_rollout_reference.py --reference /tmp/attr_ref/ref \
        [--images 8] [--dtype float64] [--fixture tests/fixtures/attr_rollout_reference.npz --fixture-images 3]

The model is tests/seeded_vit.py's seeded 12-head ViT (the reference loops over a hard-coded 12
heads); its timm state dict loads into the reference's VisionTransformer unchanged (strict). For
each random image (uint8 pixels from --seed) both implementations explain the predicted class;
the script prints the maximum absolute difference of the 16 signed patch values before our
clamp/normalisation (and relative to the largest |value|), for head_fusion="max" (the authors'
fusion) against each of the reference's three rollout variants, and the difference of the
normalised maps explain() returns from the reference's signed map clamped and renormalised.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fvit_core.explanations.attention import capture_attention, explain, fuse_heads  # noqa: E402
from fvit_core.explanations.attribution_rollout import (  # noqa: E402
    attention_attribution,
    attribution_rollout_matrix,
    block_exit_logits,
    exit_gradients,
)
from fvit_core.models import PixelViT  # noqa: E402
from seeded_vit import SEEDED_VIT_ARGS, make_seeded_vit, weight_checksum  # noqa: E402

REFERENCE_COMMIT = "588c8234fd17fd97a1871e55305e93dd867bf769"
VARIANTS = ("compute_rollout_attention", "compute_rollout_max_attention", "compute_rollout_min_attention")


def reference_functions(root: Path, names: tuple[str, ...]) -> dict:
    """The named top-level functions of the reference's generate_visualizations.py, compiled from
    its source as written (they use only torch)."""
    path = root / "baselines" / "ViT" / "generate_visualizations.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    if {node.name for node in nodes} != set(names):
        raise SystemExit(f"{path} lacks {set(names) - {node.name for node in nodes}}")
    namespace: dict = {"torch": torch}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}


def reference_model(model: PixelViT) -> torch.nn.Module:
    """The reference's ViT_ig.VisionTransformer holding ``model``'s weights (same keys as timm)."""
    from baselines.ViT.ViT_ig import VisionTransformer

    vit = model.vit
    ref = VisionTransformer(
        img_size=SEEDED_VIT_ARGS["img_size"], patch_size=SEEDED_VIT_ARGS["patch_size"], num_classes=model.num_classes,
        embed_dim=vit.embed_dim, depth=model.depth, num_heads=model.num_heads, mlp_ratio=SEEDED_VIT_ARGS["mlp_ratio"],
        qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=vit.norm.eps),
    )
    ref.load_state_dict(vit.state_dict(), strict=True)
    return ref.eval()


def reference_attr_rollout(ref: torch.nn.Module, inputs: torch.Tensor, rollouts: dict) -> dict[str, np.ndarray]:
    """The reference's maps of one normalised image (1, 3, H, W): {variant: (P,) signed values}."""
    from baselines.ViT.ViT_explanation_generator import IG

    layers = IG(ref).generate_ig(inputs.clone().requires_grad_(True))
    return {name: fn(layers)[:, 0, 1:].detach().reshape(-1).double().numpy() for name, fn in rollouts.items()}


def ours_attr_rollout(model: PixelViT, inputs: torch.Tensor, head_fusion: str) -> tuple[np.ndarray, torch.Tensor]:
    """Our signed (B, P) values before the clamp (the functions explain() composes) and the target."""
    with torch.enable_grad(), capture_attention(model, keep_grad=True) as record:
        exits = block_exit_logits(model.vit, inputs.clone().requires_grad_(True))
    target = exits[-1].detach().argmax(dim=-1)
    maps = record.layer_maps()
    grads = exit_gradients(exits, maps, target)
    fused = [fuse_heads(attention_attribution(a, g), head_fusion) for a, g in zip(maps, grads)]
    values = attribution_rollout_matrix(fused)[:, 0, model.num_prefix_tokens:]
    return values.detach().double().numpy(), target


def clamp_renormalise(values: np.ndarray) -> np.ndarray:
    clamped = np.clip(values, 0.0, None)
    return clamped / clamped.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="root of an extracted yxheartipp/attr-rollout checkout")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seeds the model (tests/seeded_vit.py) and the images")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--fixture", help="save the first --fixture-images reference outputs here (.npz)")
    parser.add_argument("--fixture-images", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.reference).resolve()
    sys.path.insert(0, str(root))
    torch.Tensor.cuda = lambda self, *a, **k: self  # the device adaptation: the reference calls .cuda()
    dtype = getattr(torch, args.dtype)

    model = make_seeded_vit(args.seed).to(dtype)
    ref = reference_model(model).to(dtype)
    rollouts = reference_functions(root, VARIANTS)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.images, 3, *model.img_size), generator=generator, dtype=torch.uint8)
    pixels = images.to(dtype) / 255
    inputs = model.input_layer(pixels)

    ours_batch, target = ours_attr_rollout(model, inputs, "max")  # the whole batch at once
    abs_diff = {name: [] for name in VARIANTS}
    rel_diff = {name: [] for name in VARIANTS}
    batch_vs_single, norm_diff, negatives = [], [], 0
    saved_ref = []
    explained = explain(model, pixels, method="attr_rollout", head_fusion="max")
    assert torch.equal(explained.target, target)
    for index in range(args.images):
        theirs = reference_attr_rollout(ref, inputs[index:index + 1], rollouts)
        single, _ = ours_attr_rollout(model, inputs[index:index + 1], "max")
        batch_vs_single.append(float(np.abs(single[0] - ours_batch[index]).max()))
        for name in VARIANTS:
            diff = float(np.abs(ours_batch[index] - theirs[name]).max())
            abs_diff[name].append(diff)
            rel_diff[name].append(diff / float(np.abs(theirs[name]).max()))
        reference = theirs[VARIANTS[0]]
        negatives += int((reference < 0).sum())
        ours_weights = explained.attention[index].double().numpy()
        norm_diff.append(float(np.abs(ours_weights - clamp_renormalise(reference)).max()))
        saved_ref.append(reference)
    print(f"reference github.com/yxheartipp/attr-rollout @ {REFERENCE_COMMIT[:12]} ({root}); model tests/seeded_vit.py "
          f"seed {args.seed} ({json.dumps(SEEDED_VIT_ARGS)}), {args.images} random images, {args.dtype}, "
          f"predicted classes {target.tolist()}")
    print(f"{negatives} of {args.images * ours_batch.shape[1]} reference patch values are negative")
    print("reference variant                   max |ours - ref|   max |ours - ref| / max |ref|   (worst image)")
    for name in VARIANTS:
        print(f"{name:35s} {max(abs_diff[name]):.2e}          {max(rel_diff[name]):.2e}")
    print(f"explain().attention vs the reference clamped and renormalised: max |diff| {max(norm_diff):.2e}")
    print(f"ours, batch of {args.images} vs one image at a time: max |diff| {max(batch_vs_single):.2e}")
    if args.fixture:
        n = args.fixture_images
        np.savez_compressed(
            args.fixture, dtype=args.dtype, seed=args.seed, model_args=json.dumps(SEEDED_VIT_ARGS),
            weight_checksum=weight_checksum(make_seeded_vit(args.seed)), reference_commit=REFERENCE_COMMIT,
            pixels=images[:n].numpy(), target=target[:n].numpy(), attr_rollout=np.asarray(saved_ref[:n]),
        )
        print(f"saved reference outputs of {n} images to {args.fixture}")


if __name__ == "__main__":
    main()
