"""The torchattacks adapter: torchattacks' attacks as builders (attacks.runner runs them).

torchattacks gets the PixelViT itself, whose first layer normalises, so its attacks see [0, 1]
pixels (set_normalization_used is never called). It draws from torch's global RNG, which the
runner seeds in a fork; APGD and Square reseed it themselves, so they get our seed. Imported
only when such an attack is built (the import takes 0.7 s: docs/PERFORMANCE.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fvit_core.attacks.ours import AttackContext, AttackFn, Builder


def torchattacks_builder(class_name: str, *, seeded: bool = False, **fixed: Any) -> Builder:
    """Builder for ``torchattacks.<class_name>(model, **fixed, **params)``.

    ``seeded`` passes our seed to attacks that reseed the global RNG themselves (APGD, Square).
    """

    def build(ctx: AttackContext) -> AttackFn:
        import torchattacks

        extra = {"seed": ctx.seed} if seeded else {}
        return getattr(torchattacks, class_name)(ctx.model, **fixed, **extra, **ctx.params)

    return build


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if not isinstance(n, int) or n < 2:
        raise ValueError("AutoAttack needs model.num_classes (>= 2); wrap the ViT in PixelViT")
    return n


def build_autoattack(ctx: AttackContext) -> AttackFn:
    import torchattacks

    eps, version, n_classes = float(ctx.params["eps"]), str(ctx.params["version"]), _num_classes(ctx.model)
    if version == "fast":
        # The first two attacks of the standard ensemble, each run on the points still correct.
        return torchattacks.MultiAttack([
            torchattacks.APGD(ctx.model, norm="Linf", eps=eps, seed=ctx.seed, loss="ce", n_restarts=1),
            torchattacks.APGDT(ctx.model, norm="Linf", eps=eps, seed=ctx.seed, n_classes=n_classes, n_restarts=1),
        ])
    return torchattacks.AutoAttack(ctx.model, norm="Linf", eps=eps, version=version, n_classes=n_classes, seed=ctx.seed)
