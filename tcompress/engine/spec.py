"""One text form of a method config, for the command line and the benchmarks:
`gptq:bits=4,group_size=64` (the name, then the fields that differ from their defaults).

Values are read by the field's type: numbers and booleans as written, the field's `none`
word (or `none`) for None, tuples joined by `+` (`include=*q_proj+*k_proj`), mappings as
`key=value` pairs joined by `+` (`per_layer=*mlp*=0.6+*attn*=0.4`). `value_parser` gives the
same reading to the CLI's per-field flags.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Callable

from tcompress.engine.method import METHODS, Method, method_from

TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@functools.cache
def field_types(cls: type[Method]) -> dict[str, Any]:
    """Each field's type, resolved from its annotation."""
    return typing.get_type_hints(cls)


def field_of(cls: type[Method], name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise ValueError(f"method {cls.name!r} has no field {name!r}; its fields: "
                     f"{', '.join(f.name for f in dataclasses.fields(cls))}")


def value_parser(cls: type[Method], name: str, choices: tuple | None = None) -> Callable[[str], Any]:
    """A function from the text of a value to the value of field `name` of `cls` (`choices`:
    the values allowed, by default the field's own)."""
    f = field_of(cls, name)
    return _parser(field_types(cls)[name], f.metadata.get("none") or "none", choices or f.metadata.get("choices"))


def _parser(kind: Any, none_word: str, choices: tuple | None) -> Callable[[str], Any]:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        inner = _parser(next(a for a in args if a is not type(None)), none_word, choices)
        return lambda text: None if text.strip().lower() in (none_word, "none") else inner(text)
    if typing.get_origin(kind) is tuple:
        item = _parser(args[0], none_word, choices)
        return lambda text: tuple(item(part) for part in text.split("+") if part)
    if typing.get_origin(kind) is dict:
        key, value = (_parser(a, none_word, None) for a in args)
        return lambda text: dict((key(k), value(v)) for k, _, v in (p.rpartition("=") for p in text.split("+") if p))
    if kind is bool:
        return _boolean
    scalar = {int: int, float: float, str: str}.get(kind, str)

    def parse(text: str) -> Any:
        try:
            value = scalar(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if scalar is int else 'a number'}, got {text!r}") from None
        if choices and value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {text!r}")
        return value

    return parse


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word not in TRUE + FALSE:
        raise ValueError(f"expected true or false, got {text!r}")
    return word in TRUE


def value_text(cls: type[Method], name: str, value: Any) -> str:
    """The text `value_parser` reads back as `value`."""
    f = field_of(cls, name)
    if value is None:
        return f.metadata.get("none") or "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "+".join(str(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def method_text(method: Method) -> str:
    """`name:field=value,...` with the fields that differ from their defaults."""
    changed = method.changed_fields()
    fields = ",".join(f"{key}={value_text(type(method), key, value)}" for key, value in changed.items())
    return f"{method.name}:{fields}" if fields else method.name


def parse_method(text: str) -> Method:
    """The method config written as `name[:field=value,...]`."""
    return method_from(parse_fields(text))


def parse_fields(text: str) -> dict[str, Any]:
    """`{"method": name, field: value, ...}` of `name[:field=value,...]`, not yet validated
    as a whole (for callers that add fields before building the config)."""
    name, _, rest = text.strip().partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} in {text!r}: expected one of {', '.join(sorted(METHODS))}")
    cls, fields = METHODS[name], {}
    for part in filter(None, rest.split(",")):
        key, equals, value = part.partition("=")
        if not equals:
            raise ValueError(f"{text!r}: expected field=value after the method name, got {part!r}")
        try:
            fields[key.strip()] = value_parser(cls, key.strip())(value.strip())
        except ValueError as error:
            raise ValueError(f"{text!r}: {key.strip()}: {error}") from None
    return {"method": name, **fields}
