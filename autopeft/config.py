"""Typed options: dataclasses whose fields are the YAML keys, checked with clear errors."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from autopeft.errors import ConfigError

T = TypeVar("T")
HELP = "help"  # the field metadata key of an option's help text


def option(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, help: str) -> Any:
    """A config field with its help text (``default``, or ``factory`` for a mutable default). ``autopeft config``
    and docs/config.md read the text from the field's metadata."""
    return dataclasses.field(default=default, default_factory=factory, metadata={HELP: help})


class _Unset:
    """The value of a partial config's option that was not written: the full config's default applies."""

    def __repr__(self) -> str:
        return "unset"

    def __copy__(self) -> _Unset:
        return self

    def __deepcopy__(self, memo: dict) -> _Unset:
        return self

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@functools.cache
def partial(cls: type, exclude: tuple[str, ...] = ()) -> type:
    """The options of dataclass ``cls`` less ``exclude`` as a partial config: every option unset unless written,
    checked against its type when parsed (nested option sections are partial too), with its help text. ``given``
    returns what was written, as written: the overrides of a config that another command completes."""
    hints = typing.get_type_hints(cls)
    fields = [
        (
            f.name,
            partial(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else hints[f.name],
            dataclasses.field(default=UNSET, metadata=f.metadata),
        )
        for f in dataclasses.fields(cls)
        if f.name not in exclude
    ]
    name = f"Partial{cls.__name__}"
    made = dataclasses.make_dataclass(name, fields)
    made.__module__ = __name__
    made.__doc__ = f"Some options of {cls.__name__}, each unset unless written."
    made.partial_of = cls  # what it overrides: the option reference gives a partial section a row of its own
    globals()[name] = made  # importable by name, so it pickles
    return made


def given(options: Any) -> dict[str, Any]:
    """The options a partial config (or a mapping of them, as ``asdict`` makes) holds written, as plain mappings."""
    items = dataclasses.asdict(options).items() if dataclasses.is_dataclass(options) else options.items()
    return {k: given(v) if isinstance(v, dict) else v for k, v in items if v is not UNSET}


def parse_options(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types. A class may define
    ``unwritten_defaults(values) -> dict``: defaults, for the keys ``values`` lacks, that depend on the written ones."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {_show(data)}")
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in fields:
            allowed = ", ".join(fields) if fields else "none"
            raise ConfigError(f"{where or 'config'}: unknown option '{key}'; allowed: {allowed}")
    hints = typing.get_type_hints(cls)
    values = {key: check_type(value, hints[key], f"{where}.{key}" if where else key) for key, value in data.items()}
    unwritten = getattr(cls, "unwritten_defaults", None)  # defaults that follow what was written
    return cls(**(unwritten(values) | values if unwritten else values))


def check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float only; a mapping to a nested options
    dataclass), or raise ConfigError."""
    ok, converted = _match(value, tp, where)
    if not ok:
        raise ConfigError(f"{where}: got {_show(value)}; allowed: {describe_type(tp)}")
    return converted


def describe_type(tp: Any) -> str:
    """A short human description of a type hint."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    if origin is list:
        return f"a list of ({describe_type(args[0])})"
    if origin is dict:
        return "a mapping"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _match(value: Any, tp: Any, where: str = "") -> tuple[bool, Any]:
    """Whether ``value`` fits ``tp``, and the value converted; a mapping for a dataclass (also inside
    lists and mappings) is parsed with ``parse_options``, whose errors name ``where`` and the key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return True, parse_options(tp, value, where)
        return isinstance(value, tp), value
    if tp is type(None):
        return value is None, value
    if origin is Literal:
        return (value in args and type(value) in {type(a) for a in args}), value
    if origin in (Union, types.UnionType):
        for arg in args:
            ok, converted = _match(value, arg, where)
            if ok:
                return True, converted
        return False, value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_match(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return False, value
        items = {k: _match(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return is_number, float(value) if is_number else value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def per_block(value: int | list[int], depth: int, where: str, maximum: int | None = None) -> list[int]:
    """Expand an int-or-list size option to one non-negative int per block."""
    sizes = [value] * depth if isinstance(value, int) else list(value)
    if len(sizes) != depth:
        raise ConfigError(
            f"{where}: per-block list has {len(sizes)} entries; allowed: exactly {depth} "
            f"(one per block) or a single integer"
        )
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"{where}: got {_show(size)}; allowed: a non-negative integer")
        if maximum is not None and size > maximum:
            raise ConfigError(f"{where}: got {size}; allowed: 0..{maximum}")
    return sizes
