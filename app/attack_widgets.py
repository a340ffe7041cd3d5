"""The attack's widgets: each parameter of the attack's spec (attacks.specs) as a widget in
display units, and the widgets' values back as parameters in pixel units.

Nothing here calls Streamlit or imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fvit_core.attacks.specs import AttackSpec, ParamSpec


_ABBREVIATIONS = ("et al.", "e.g.", "i.e.", "vs.", "cf.")


def first_sentence(text: str) -> str:
    """The first sentence of a description ('et al.' and 'e.g.' do not end one)."""
    start = 0
    while True:
        end = text.find(". ", start)
        if end < 0:
            return text
        if not any(text[:end + 1].endswith(abbreviation) for abbreviation in _ABBREVIATIONS):
            return text[:end + 1]
        start = end + 1


def linked_params(spec: AttackSpec) -> list[str]:
    """The parameters of ``spec`` that the 'tie to the analysis' option sets: the registry's rules,
    the same as the CLI's (``AttackSpec.derived``: the Linf step alpha = eps / 5; and
    ``AttackSpec.follows``: the top-k attack's k and explanation, the adaptive attack's sigma)."""
    return [name for name, _ in spec.derived] + list(spec.follows)


def linked_value(spec: AttackSpec, name: str, params: dict[str, Any], settings: dict[str, Any]) -> Any:
    """Value of a linked parameter: its registry rule applied to ``params``, or the analysis setting."""
    rules = dict(spec.derived)
    return rules[name](params) if name in rules else settings[name]


@dataclass(frozen=True)
class WidgetSpec:
    """How to show one attack parameter: kind ('slider', 'number', 'select', 'checkbox'),
    bounds and value in display units (value * scale), and the scale back to pixel units."""

    kind: str
    label: str
    value: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    scale: float = 1.0
    format: str | None = None
    options: tuple[str, ...] = ()
    help: str = ""


MAX_SLIDER_POSITIONS = 500


def widget_spec(param: ParamSpec) -> WidgetSpec:
    """Map a :class:`ParamSpec` to a widget: '/255' floats become sliders in 1/255 units, floats
    with a modest range sliders, wide-range floats and all integers number inputs."""
    help_text = param.help + (f" (in {param.unit})" if param.unit else "")
    if param.kind == "bool":
        return WidgetSpec("checkbox", param.name, bool(param.default), help=help_text)
    if param.kind == "choice":
        return WidgetSpec("select", param.name, param.default, options=tuple(param.choices), help=help_text)
    scale = param.display_scale
    low = None if param.min is None else param.min * scale
    high = None if param.max is None else param.max * scale
    step = None if param.step is None else round(param.step * scale, 10)
    label = f"{param.name} ({param.unit})" if param.unit else param.name
    if param.kind == "int":
        return WidgetSpec("number", label, int(param.default), _int(low), _int(high), int(step or 1), help=help_text)
    value = round(float(param.default) * scale, 10)
    fits = None not in (low, high, step) and step > 0 and (high - low) / step <= MAX_SLIDER_POSITIONS
    decimals = max(0, -int(np.floor(np.log10(step)))) if step else 3
    return WidgetSpec("slider" if fits else "number", label, value, low, high, step, scale,
                      f"%.{decimals}f", help=help_text)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def attack_params(spec: AttackSpec, shown: dict[str, Any], *, linked: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """Attack parameters in pixel units from widget values in display units.

    ``shown`` maps a parameter name to its widget value (display units); with ``linked`` the
    :func:`linked_params` are set from the analysis ``settings`` instead. Every parameter is
    written out, so an exported settings file does not depend on today's defaults.
    """
    params: dict[str, Any] = {}
    for param in spec.params:
        if param.name in shown:
            value = shown[param.name]
            if param.kind == "float":
                value = float(value) / param.display_scale
            elif param.kind == "int":
                value = int(value)
            params[param.name] = value
        else:
            params[param.name] = param.default
    if linked:
        for name in linked_params(spec):
            params[name] = linked_value(spec, name, params, settings)
    return params
