"""The attack's settings (torch-free): which attack, its budget and steps shortcuts and its other
parameters, and their resolution against the attack's spec (attacks.specs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from fvit_core.attacks.specs import ATTACKS, AttackSpec, ParamValue, get_attack
from fvit_core.errors import SettingError
from fvit_core.protocol.seeds import attack_parts
from fvit_core.protocol.settings import Settings, bounded, one_of, setting


@dataclass(frozen=True)
class ResolvedAttack:
    """An attack with every parameter resolved (defaults, shortcuts, derived and followed ones),
    in pixel units: what is run, seeded, cached and reported."""

    name: str
    params: dict[str, ParamValue]

    @property
    def spec(self) -> AttackSpec:
        return get_attack(self.name)

    @property
    def budget(self) -> float | None:
        """The enforced radius (``eps``) in pixel units, or None for unbounded attacks."""
        return self.spec.budget(self.params)

    @property
    def seed_parts(self) -> tuple:
        """What the attacked image depends on besides the image and the seed (protocol.seeds:
        the attack, its budget, eot_dds's sigma, topk's method): the setting parts of its seed."""
        return attack_parts(self.name, self.params)


@dataclass(frozen=True, kw_only=True)
class AttackSettings(Settings):
    """Which attack (``name``, one of attacks.specs.ATTACKS), the ``eps`` and ``steps`` shortcuts
    (None: the attack's own default) and any other ``params`` by name, in pixel units (eps 8/255
    for Linf, 0.5 for L2)."""

    name: str = setting("pgd", json="attack", check=one_of("attack", tuple(ATTACKS)))
    eps: float | None = setting(None, check=bounded("eps", optional=True))
    steps: int | None = setting(None, check=bounded("steps", optional=True))
    params: dict = setting(factory=dict, json="attack_params")

    @property
    def spec(self) -> AttackSpec:
        return get_attack(self.name)

    def arguments(self, follow: Mapping[str, Any] | None = None, *, strict: bool = True) -> dict:
        """The parameters given to the attack, not yet resolved (:meth:`AttackSpec.resolve` adds
        the defaults and the derived ones, alpha = eps / 5).

        ``params`` as given; the ``eps`` / ``steps`` shortcuts override them; the
        :attr:`AttackSpec.follows` parameters not given take the analysis setting of the same name
        from ``follow`` (the FViT's sigma for eot_dds; k, method and head fusion for topk). With
        ``strict`` a shortcut the attack lacks is a SettingError; without it, it is left out (fvit
        eval gives its budgets to every attack of the grid), as are ``params`` the attack lacks.
        """
        spec = self.spec
        names = {p.name for p in spec.params}
        params = dict(self.params) if strict else {k: v for k, v in self.params.items() if k in names}
        for key, value in (("eps", self.eps), ("steps", self.steps)):
            if value is None:
                continue
            if key not in names:
                if strict:
                    raise SettingError(f"attack {self.name!r} has no parameter {key!r}; its parameters: "
                                       f"{', '.join(sorted(names)) or 'none'}")
                continue
            params[key] = value
        for key in spec.follows:
            if key not in params and follow is not None and follow.get(key) is not None:
                params[key] = follow[key]
        return params

    def resolve(self, follow: Mapping[str, Any] | None = None, *, strict: bool = True) -> ResolvedAttack:
        """Every parameter of the attack, checked against its spec (SettingError naming the range)."""
        resolved = self.spec.resolve(self.arguments(follow, strict=strict))
        return ResolvedAttack(self.name, {k: (v.item() if hasattr(v, "item") else v) for k, v in resolved.items()})
