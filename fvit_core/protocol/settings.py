"""The settings machinery: frozen settings objects that check themselves, and their flat JSON.

Each concept of the method owns one settings object (docs/ARCHITECTURE.md, "Settings"): a frozen
dataclass subclassing :class:`Settings`, whose fields are declared with :func:`setting` (default,
flat JSON name, check). The objects check their values when they are made, so an invalid object
cannot exist: a type against the field's annotation first (``"eps": "8/255"`` is refused in one
line, a bool is never taken for a number), then the field's own check (a bound of
:mod:`limits`, or a choice), then the object's :meth:`Settings.check` for rules between its
fields.

A config (one analysis, an eval run, a certify run) is a settings object whose fields are other
settings objects. Settings files, the result JSON and the dashboard's widgets all speak the
*flat* form: one name per setting (``sigma``, ``k``, ``attack_params``), whatever object holds
it. :func:`to_flat` and :func:`from_flat` are the one translation between the two.

This module imports no torch and no concept: the concepts import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence, TypeVar

from fvit_core.errors import SettingError
from fvit_core.protocol import limits

S = TypeVar("S", bound="Settings")
Check = Callable[[Any], None]

# Keys of a field's metadata.
_JSON = "fvit_json"  # the flat name; False: not part of the flat form (a runtime-only switch)
_CHECK = "fvit_check"


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            json: str | bool | None = None, check: Check | None = None) -> Any:
    """A settings field: its ``default`` (or ``factory``), its flat ``json`` name (default: the
    field's name; False keeps it out of the flat form) and its ``check`` (a callable raising
    SettingError; :func:`bounded` and :func:`one_of` make the usual ones)."""
    metadata = {_JSON: json, _CHECK: check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bounded(name: str, *, optional: bool = False) -> Check:
    """The check of a number against ``limits.BOUNDS[name]`` (None allowed when ``optional``)."""
    def check(value: Any) -> None:
        if not (optional and value is None):
            limits.check(name, value)
    return check


def bounded_list(name: str, item: str | None = None, *, allow_empty: bool = False) -> Check:
    """The check of a list of numbers, each within ``limits.BOUNDS[item or name]``."""
    return lambda values: limits.check_list(name, values, item, allow_empty=allow_empty)


def one_of(what: str, allowed: Sequence[str]) -> Check:
    """The check of a name against ``allowed`` ("unknown WHAT 'x'; choose one of ...")."""
    return lambda value: limits.check_choice(what, value, allowed)


def some_of(what: str, allowed: Sequence[str], name: str) -> Check:
    """The check of a non-empty list of names (a grid axis), each one of ``allowed``."""
    return lambda values: limits.check_choices(what, values, allowed, name=name)


@dataclass(frozen=True)
class Settings:
    """Base of every settings object: frozen, checked when made (module docstring).

    ``OMITTED``: dotted paths of nested settings that a config leaves out of its flat form
    (``"smoothing.sigma"``: fvit eval's grid gives those values per grid point instead)."""

    OMITTED: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, list):  # JSON arrays become the declared tuples
                value = tuple(value)
                object.__setattr__(self, spec.name, value)
            kind = _settings_class(type(self), spec)
            if kind is not None:
                if not isinstance(value, kind):
                    raise SettingError(f"{spec.name} must be {kind.__name__} settings, got {type(value).__name__}")
                continue
            _check_type(_json_name(spec), value, str(spec.type))
            check = spec.metadata.get(_CHECK)
            if check is not None:
                check(value)
        self.check()

    def check(self) -> None:
        """Rules between this object's fields (subclasses override)."""

    # -- the flat form ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The flat form: {flat name: plain value} (:func:`to_flat`)."""
        return to_flat(self)

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """The object of a flat mapping; names it lacks take their defaults (:func:`from_flat`)."""
        return from_flat(cls, data)

    @classmethod
    def of(cls: type[S], **values: Any) -> S:
        """``cls.from_dict(values)``: the object with these flat settings, the rest at their
        defaults, e.g. ``AnalysisConfig.of(sigma=0.5, n_samples=32)``."""
        return from_flat(cls, values)

    def replace(self: S, **values: Any) -> S:
        """A copy with these flat settings changed, checked like a new object."""
        return from_flat(type(self), {**to_flat(self), **values})


def _json_name(spec: dataclasses.Field) -> str:
    name = spec.metadata.get(_JSON)
    return spec.name if name is None else name


def flat_fields(cls: type[Settings]) -> Iterator[tuple[str, tuple[str, ...], dataclasses.Field]]:
    """(flat name, attribute path, field) of every setting of ``cls``, nested objects expanded,
    in declaration order, without the ``cls.OMITTED`` paths."""
    for name, path, spec in _all_fields(cls):
        if ".".join(path) not in cls.OMITTED:
            yield name, path, spec


def _all_fields(cls: type[Settings]) -> Iterator[tuple[str, tuple[str, ...], dataclasses.Field]]:
    for spec in dataclasses.fields(cls):
        kind = _settings_class(cls, spec)
        if kind is not None:
            for name, path, inner in _all_fields(kind):
                yield name, (spec.name, *path), inner
        elif spec.metadata.get(_JSON) is not False:
            yield _json_name(spec), (spec.name,), spec


def flat_defaults(cls: type[Settings]) -> dict[str, Any]:
    """{flat name: default} of the settings of ``cls`` that have one (a required setting, such as
    a batch run's data folder, has none)."""
    defaults = {}
    for name, _, spec in flat_fields(cls):
        if spec.default is not dataclasses.MISSING:
            defaults[name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            defaults[name] = spec.default_factory()
    return {name: list(v) if isinstance(v, tuple) else v for name, v in defaults.items()}


def flat_names(cls: type[Settings]) -> tuple[str, ...]:
    """Every flat name of ``cls`` (the names a settings file of it may hold)."""
    return tuple(name for name, _, _ in flat_fields(cls))


def _settings_class(cls: type, spec: dataclasses.Field) -> type[Settings] | None:
    """The settings class of a nested field (its default factory names it), else None."""
    factory = spec.default_factory if spec.default_factory is not dataclasses.MISSING else None
    default = spec.default if spec.default is not dataclasses.MISSING else None
    kind = factory if isinstance(factory, type) else type(default) if default is not None else None
    return kind if isinstance(kind, type) and issubclass(kind, Settings) else None


def to_flat(settings: Settings) -> dict[str, Any]:
    """{flat name: value} of every setting (tuples as lists, mappings copied): the settings file
    and the JSON ``config`` of a result."""
    out: dict[str, Any] = {}
    for name, path, _ in flat_fields(type(settings)):
        value: Any = settings
        for attribute in path:
            value = getattr(value, attribute)
        out[name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping) else value
    return out


def from_flat(cls: type[S], data: Mapping[str, Any]) -> S:
    """The ``cls`` of a flat mapping: each name goes to the object that holds it; names the
    mapping lacks keep their defaults; an unknown name is a SettingError that lists the known."""
    if not isinstance(data, Mapping):
        raise SettingError(f"settings must be a JSON object of name: value pairs, got {type(data).__name__}")
    paths = {name: path for name, path, _ in flat_fields(cls)}
    unknown = sorted(str(name) for name in data if name not in paths)
    if unknown:
        shown = ", ".join(limits.short_repr(name, 40).strip("'") for name in unknown[:5]) + (
            " ..." if len(unknown) > 5 else "")
        raise SettingError(f"unknown settings {shown}; known: {', '.join(sorted(paths))}")
    missing = [name for name, _, spec in flat_fields(cls)
               if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING and name not in data]
    if missing:
        raise SettingError(f"missing settings {', '.join(missing)}: they have no default")
    return _build(cls, {paths[name]: value for name, value in data.items()})


def _build(cls: type[S], values: dict[tuple[str, ...], Any]) -> S:
    kwargs: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        kind = _settings_class(cls, spec)
        if kind is not None:
            inner = {path[1:]: v for path, v in values.items() if path[0] == spec.name}
            if inner or _required(kind):
                kwargs[spec.name] = _build(kind, inner)
        elif (spec.name,) in values:
            kwargs[spec.name] = values[(spec.name,)]
    return cls(**kwargs)


def _required(cls: type[Settings]) -> bool:
    return any(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(cls))


# --------------------------------------------------------------------------------------------
# Types: every field against its annotation
# --------------------------------------------------------------------------------------------

_FIELD_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float),
                                              "dict": (dict,), "Mapping[str, Any]": (Mapping,)}
_FIELD_WORDS = {"str": "a string", "bool": "true or false", "int": "a whole number", "float": "a number",
                "dict": "a mapping of parameter names to values",
                "Mapping[str, Any]": "a mapping of parameter names to values", "None": "null"}


def _check_type(name: str, value: Any, annotation: str) -> None:
    """``value`` against an annotation of str, bool, int, float, dict, tuple[X, ...] of those,
    optionally ``| None``. A bool is never taken for a number."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    element = next((k[len("tuple["):-len(", ...]")] for k in kinds if k.startswith("tuple[") and k.endswith(", ...]")),
                   None)
    if element is not None:
        if not isinstance(value, (list, tuple)):
            raise SettingError(f"{name} must be a list of values, got {limits.short_repr(value)}")
        for item in value:
            _check_type(name, item, element)
        return
    allowed = tuple(t for kind in kinds for t in _FIELD_TYPES.get(kind, ()))
    if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
        wanted = " or ".join(_FIELD_WORDS[kind] for kind in kinds if kind in _FIELD_WORDS)
        raise SettingError(f"{name} must be {wanted}, got {limits.short_repr(value)}")
    if isinstance(value, Mapping) and not all(isinstance(key, str) for key in value):
        raise SettingError(f"{name} must map parameter names to values, got {limits.short_repr(value)}")
