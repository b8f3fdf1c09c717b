"""Command-line options built from the method registry: `--method` and one flag per field of
the methods a command offers, so a newly registered method appears with no edit here.

A field `group_size` becomes `--group-size`, read by the field's type (`engine.spec`); a
boolean field becomes `--name` / `--no-name`; fields shared by the same methods share an
argument group named after them. Flags not given leave each method's own default, and a flag
the chosen method has no field for is refused, naming the method's own options.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from typing import Any, Callable

from tcompress.engine.method import METHODS, Method, method_from, methods_of
from tcompress.engine.spec import field_types, parse_fields, value_parser, value_text


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_method_options(parser: argparse.ArgumentParser, kind: str, default: str) -> None:
    """`--method` (any registered method of `kind`) and every field of those methods as a flag."""
    methods = methods_of(kind)
    parser.add_argument("--method", default=default, metavar="METHOD",
                        help=f"one of {', '.join(methods)} (default {default}); fields may follow as "
                        f"METHOD:field=value,... (e.g. gptq:bits=3,damp=0.05)")
    owners: dict[str, list[type[Method]]] = {}
    for cls in methods.values():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(cls)
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for name, classes in owners.items():
        title = tuple(cls.name for cls in classes)
        if title not in groups:
            groups[title] = parser.add_argument_group(f"options of {', '.join(title)}")
        add_field_flag(groups[title], name, classes)


def add_field_flag(group: argparse._ArgumentGroup, name: str, classes: list[type[Method]]) -> None:
    """The flag(s) of the field `name` that `classes` share."""
    f = next(f for f in dataclasses.fields(classes[0]) if f.name == name)
    defaults = defaults_text(name, classes)
    help_text = f"{f.metadata.get('help') or name}" + (f" ({defaults})" if defaults else "")
    if field_types(classes[0])[name] is bool:
        group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
        for alias in f.metadata.get("aliases", ()):
            group.add_argument(alias, dest=name, action="store_const", const=not _default(f),
                               default=argparse.SUPPRESS, help=f"the same as {flag(name)}"
                               f"{'' if not _default(f) else ' off'}")
        return
    choices = list(dict.fromkeys(c for cls in classes for c in (_field(cls, name).metadata.get("choices") or ())))
    group.add_argument(flag(name), dest=name, type=argument_type(classes[0], name, tuple(choices) or None),
                       default=argparse.SUPPRESS, metavar=metavar(classes[0], name, choices), help=help_text)


def argument_type(cls: type[Method], name: str, choices: tuple | None) -> Callable[[str], Any]:
    parse = value_parser(cls, name, choices)

    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    read.__name__ = name  # argparse names the type in its messages
    return read


def metavar(cls: type[Method], name: str, choices: list) -> str:
    if choices:
        return "{" + ",".join(map(str, choices)) + "}"
    kind = str(field_types(cls)[name])
    words = {"int": "N", "float": "X", "str": "TEXT"}
    shown = next((word for key, word in words.items() if key in kind), "VALUE")
    if "dict" in kind:
        return "PATTERN=X+..."
    return "PATTERN+..." if "tuple" in kind else shown


def defaults_text(name: str, classes: list[type[Method]]) -> str:
    """`default 4`, or `default 4; outliers: 8` where methods differ; empty where the default
    is nothing (an empty pattern list)."""
    values = {cls.name: value_text(cls, name, _default(_field(cls, name))) for cls in classes}
    common = Counter(values.values()).most_common(1)[0][0]
    exceptions = [f"{method}: {value or '-'}" for method, value in values.items() if value != common]
    return "; ".join(([f"default {common}"] if common else []) + exceptions)


def _field(cls: type[Method], name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def method_from_args(args: argparse.Namespace, kind: str, fixed: dict[str, Any] | None = None,
                     why: str = "") -> Method:
    """The method config `--method` names, with the fields its spec and the flags give; `fixed`
    fields are set too (`why`: the option that asks for them), refused where the method has no
    such field or a flag gives another value."""
    fields_by_flag = {name: getattr(args, name) for cls in methods_of(kind).values()
                      for name in (f.name for f in dataclasses.fields(cls)) if hasattr(args, name)}
    spec = parse_fields(args.method)
    cls = METHODS[spec["method"]]
    if cls.kind != kind:
        raise ValueError(f"--method {cls.name} is a {cls.kind} method; expected one of {', '.join(methods_of(kind))}")
    own = {f.name for f in dataclasses.fields(cls)}
    foreign = [flag(name) for name in fields_by_flag if name not in own]
    if foreign:
        raise ValueError(f"{', '.join(foreign)} does not apply to --method {cls.name} (its options: "
                         f"{', '.join(flag(name) for name in sorted(own))})")
    given = {**spec, **fields_by_flag}
    for name, value in (fixed or {}).items():
        if name not in own:
            raise ValueError(f"{why}: --method {cls.name} has no {flag(name)} to set")
        if name in given and given[name] != value:
            raise ValueError(f"{flag(name)} {value_text(cls, name, given[name])} conflicts with {why}, which needs "
                             f"{value_text(cls, name, value)}")
    return method_from({**given, **(fixed or {})})
