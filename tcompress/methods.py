"""Methods: typed configs, a registry by name, and `tc.apply`.

A method is a frozen dataclass. It takes one of three shapes, kept deliberately flat:

- `LinearMethod` acts on one linear at a time: the engine hands it the linear's inputs
  (`observe`), then asks it to change the linear (`apply`), which may return a
  replacement module (a packed `QuantLinear`, say).
- `BlockMethod` acts on a whole block and its inputs (scale search, norm folding).
- `ModelMethod` changes the model as a whole (structured pruning shrinks its config).

`register` files a method under its `name`, so recipes, the CLI and Python name methods
by the same strings.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

if TYPE_CHECKING:
    from tcompress.calib import BlockInputs, BlockRunner
    from tcompress.models.adapters import Adapter, Block

METHODS: dict[str, type[Method]] = {}


class Method:
    """Base of every method config (subclasses are frozen dataclasses)."""

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True  # False: calibration-free, no forward passes

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self)}


class LinearMethod(Method):
    """A method applied to each selected linear, from statistics of its inputs."""

    true_sequential: ClassVar[bool] = False  # observe each group after the ones before changed
    input_only_stats: ClassVar[bool] = False  # stats depend on the input alone: linears fed one tensor share them
    include: tuple[str, ...] = ()  # fnmatch patterns of linear names to change; empty: all
    exclude: tuple[str, ...] = ()  # fnmatch patterns of linear names left alone

    def selects(self, name: str, linear: nn.Module) -> bool:
        if self.include and not any(fnmatch.fnmatch(name, pattern) for pattern in self.include):
            return False
        return not any(fnmatch.fnmatch(name, pattern) for pattern in self.exclude)

    def check(self, name: str, linear: nn.Module) -> None:
        """Raise a clear error if this linear cannot take the method (before any work)."""

    def init_stats(self, linear: nn.Module) -> Any:
        return None

    def observe(self, stats: Any, x: Tensor) -> Any:  # x: [tokens, in]
        return stats

    def apply(self, linear: nn.Module, stats: Any, name: str) -> nn.Module | None:
        raise NotImplementedError


class BlockMethod(Method):
    """A method applied to a whole block, given its inputs and a way to run it."""

    def apply_block(self, adapter: Adapter, block: Block, inputs: BlockInputs, run: BlockRunner
                    ) -> dict[str, nn.Module] | None:
        """Change the block in place; may return replacement modules by full name (packed
        linears, say), which the engine puts in place once the block's outputs are computed."""
        raise NotImplementedError


class ModelMethod(Method):
    """A method that changes the model as a whole (its architecture, say), given calibration data."""

    def check(self, model: nn.Module) -> None:
        """Raise a clear error if the model cannot take the method (before any work)."""

    def apply_model(self, model: nn.Module, calib: Any, progress: bool = True) -> None:
        raise NotImplementedError


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: file the method under `cls.name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise TypeError(f"method name {cls.name!r} is taken by {METHODS[cls.name].__name__}")
    METHODS[cls.name] = cls
    return cls


def method_from(spec: dict[str, Any]) -> Method:
    """A config from `{"method": name, field: value, ...}` (a recipe stage, a saved record)."""
    fields = dict(spec)
    name = fields.pop("method", None)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(sorted(METHODS)) or '(none registered)'}")
    cls = METHODS[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"method {name!r} has no field(s) {unknown}; its fields: {sorted(allowed)}")
    return cls(**fields)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` of `root` is."""
    if not name:
        raise ValueError(f"cannot replace the root module itself by a {type(new).__name__}: wrap it in a module")
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
