"""The packed formats by name: each module class registers itself with `@register_format`.

A packed module has a class attribute `format` (the name saved in `tcompress.json`),
`layout()` (the shape fields that rebuild an empty module) and `from_layout(layout, dtype)`;
optionally `after_load(model)` (links made once every module is in place) and `nbytes()`.
Saving writes each packed module's layout beside its buffers; loading looks the class up here.
"""

from __future__ import annotations

from torch import nn

FORMATS: dict[str, type[nn.Module]] = {}


def register_format(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: file a packed module class under its `format`."""
    name = getattr(cls, "format", "")
    if not name or not hasattr(cls, "layout") or not hasattr(cls, "from_layout"):
        raise TypeError(f"{cls.__name__} needs `format`, `layout()` and `from_layout()` to be a packed format")
    if FORMATS.get(name, cls) is not cls:
        raise TypeError(f"packed format {name!r} is taken by {FORMATS[name].__name__}")
    FORMATS[name] = cls
    return cls


def is_packed(module: nn.Module) -> bool:
    return isinstance(module, tuple(FORMATS.values()))


def packed_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every packed module of `model` by name."""
    return {name: module for name, module in model.named_modules() if is_packed(module)}


def packed_layouts(model: nn.Module) -> dict[str, dict]:
    """`{module name: {"format": ..., shape fields}}` for every packed module of `model`."""
    return {name: {"format": module.format, **module.layout()} for name, module in packed_modules(model).items()}


def format_class(name: str) -> type[nn.Module]:
    """The class of the packed format `name`, or a clear error."""
    if name not in FORMATS:
        raise ValueError(f"unknown packed format {name!r}: expected one of {', '.join(sorted(FORMATS))}")
    return FORMATS[name]
