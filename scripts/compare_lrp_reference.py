"""Compare fvit's LRP explanations with Chefer et al.'s reference implementation on the same weights.

The reference (github.com/hila-chefer/Transformer-Explainability) is NOT part of this project:
extract it anywhere (it needs einops) and pass its root directory. This script only imports it.

    python scripts/compare_lrp_reference.py --reference /tmp/ref-te \
        --data ../shared/data/cifar10-test-2k --images 20 [--fixture tests/fixtures/lrp_reference.npz]

For each image it loads the shipped classifier's weights into the reference's
baselines/ViT/ViT_LRP.py (transformer_attribution) and ViT_orig_LRP.py (full LRP, last-layer LRP)
VisionTransformer (img_size 32, patch 4, embed 192, depth 6, heads 3, mlp_ratio 2, qkv bias),
runs both implementations on the normalised image for the predicted class, and prints per method
the maximum relative difference max|ours - ref| / max|ref| over the 64 patch relevances and the
median Spearman rank correlation. ``--fixture`` saves the reference outputs of the first images.
``--dtype float64`` runs both in double precision, where their agreement does not depend on the
CPU's float32 kernels (the fixture the tests compare with is made so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fvit_core.data.images import load_image, prepare_image  # noqa: E402
from fvit_core.explanations.lrp import lrp_patch_relevance  # noqa: E402
from fvit_core.models import load_classifier  # noqa: E402

# fvit method -> (reference module, reference relprop method)
METHODS = {
    "transformer_attribution": ("baselines.ViT.ViT_LRP", "transformer_attribution"),
    "lrp": ("baselines.ViT.ViT_orig_LRP", "full"),
    "partial_lrp": ("baselines.ViT.ViT_orig_LRP", "last_layer"),
}


def reference_model(module_name: str, vit: torch.nn.Module) -> torch.nn.Module:
    """The reference VisionTransformer with the shipped weights (timm and reference keys coincide)."""
    module = __import__(module_name, fromlist=["VisionTransformer"])
    embed = vit.patch_embed.proj
    ref = module.VisionTransformer(
        img_size=int(vit.patch_embed.img_size[0]), patch_size=int(embed.kernel_size[0]), num_classes=vit.num_classes,
        embed_dim=vit.embed_dim, depth=len(vit.blocks), num_heads=vit.blocks[0].attn.num_heads,
        mlp_ratio=vit.blocks[0].mlp.fc1.out_features / vit.embed_dim, qkv_bias=vit.blocks[0].attn.qkv.bias is not None,
    )
    ref.norm.eps = vit.norm.eps  # the reference's final LayerNorm uses torch's default eps
    missing, unexpected = ref.load_state_dict(vit.state_dict(), strict=False)
    if missing:
        raise SystemExit(f"weights missing in the reference model: {missing}")
    return ref.eval()


def reference_relevance(ref: torch.nn.Module, pixels: torch.Tensor, method: str, target: int, grid: int) -> np.ndarray:
    """The reference's 64 patch relevances (full LRP: pixel relevances summed per patch)."""
    ref.zero_grad()
    x = pixels.clone().requires_grad_(True)
    logits = ref(x)
    one_hot = torch.zeros_like(logits)
    one_hot[0, target] = 1
    (logits * one_hot).sum().backward(retain_graph=True)
    cam = ref.relprop(one_hot, method=method, alpha=1).detach()
    if method == "full":
        side = pixels.shape[-1] // grid
        cam = cam.reshape(1, grid, side, grid, side).sum(dim=(2, 4))
    return cam.reshape(-1).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="root of an extracted Transformer-Explainability checkout")
    parser.add_argument("--model", default=str(REPO / "assets/models/cifar10-vit"))
    parser.add_argument("--data", required=True, help="folder of class folders of images")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--fixture", help="save the first --fixture-images reference outputs here (.npz)")
    parser.add_argument("--fixture-images", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision both implementations run in")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.reference).resolve()))
    dtype = getattr(torch, args.dtype)

    clf = load_classifier(args.model)
    vit = clf.vit.to(dtype).eval()
    grid = int(vit.patch_embed.grid_size[0])
    refs = {name: reference_model(module, vit).to(dtype) for name, (module, _) in METHODS.items()}
    files = sorted(Path(args.data).rglob("*.jpg"))
    step = max(1, len(files) // args.images)
    files = files[::step][: args.images]
    rel_diff = {name: [] for name in METHODS}
    rho = {name: [] for name in METHODS}
    saved: dict[str, list] = {"pixels": [], "target": [], **{name: [] for name in METHODS}}
    for index, path in enumerate(files):
        image = torch.from_numpy(prepare_image(load_image(path.read_bytes()), clf.img_size))[None]
        pixels = (image.to(dtype) - clf.mean.to(dtype)) / clf.std.to(dtype)
        for name, (_, ref_method) in METHODS.items():
            with torch.enable_grad():
                logits, ours, target = lrp_patch_relevance(vit, pixels, name)
            ours_np = ours.detach().reshape(-1).double().numpy()
            theirs = reference_relevance(refs[name], pixels, ref_method, int(target[0]), grid)
            rel_diff[name].append(float(np.abs(ours_np - theirs).max() / np.abs(theirs).max()))
            rho[name].append(float(spearmanr(ours_np, theirs).statistic))
            if index < args.fixture_images:
                saved[name].append(theirs)
        if index < args.fixture_images:
            saved["pixels"].append(image[0].numpy())
            saved["target"].append(int(target[0]))
    print(f"{len(files)} images from {args.data}, model {args.model}, {args.dtype}")
    print("method                   max rel diff (max over images)   Spearman rho (min / median)")
    for name in METHODS:
        print(f"{name:24s} {max(rel_diff[name]):.2e}                         "
              f"{min(rho[name]):.6f} / {float(np.median(rho[name])):.6f}")
    if args.fixture:
        np.savez_compressed(args.fixture, dtype=args.dtype, **{key: np.asarray(value) for key, value in saved.items()})
        print(f"saved reference outputs of {args.fixture_images} images to {args.fixture}")


if __name__ == "__main__":
    main()
