"""The method protocol: typed configs, their three shapes, and the registry by name.

A method is a frozen dataclass whose fields are its settings (each declared with `option`,
which carries its help text for the CLI). It takes exactly one of three shapes, kept flat:

- `LinearMethod` acts on one linear at a time: the engine hands it the linear's inputs
  (`observe`), then asks it to change the linear (`apply`), which may return a
  replacement module (a packed `QuantLinear`, say).
- `BlockMethod` acts on a whole block and its inputs (scale search, norm folding).
- `ModelMethod` changes the model as a whole (structured pruning shrinks its config).

The first two choose their linears by the fields of `Selection` (`include`, `exclude`,
`head`). `register` files a method under its `name`; its `kind` (quantize, prune, arch)
is the command that offers it, so recipes, the CLI and Python name methods by the same
strings and a new method needs no CLI edit.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

if TYPE_CHECKING:
    from tcompress.engine.inputs import BlockInputs, BlockRunner
    from tcompress.models.adapters import Adapter, Block

METHODS: dict[str, type[Method]] = {}
KINDS = ("quantize", "prune", "arch")


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           none: str | None = None, choices: tuple | None = None, aliases: tuple[str, ...] = (),
           kw_only: bool = False) -> Any:
    """A method field with what the CLI shows for it: `help`; `none`, the word that stands
    for None on the command line (e.g. "channel" for a per-channel group size); `choices`;
    `aliases`, further flags that set it (a boolean alias sets the opposite of the default)."""
    metadata = {"help": help, "none": none, "choices": choices, "aliases": aliases}
    return field(default=default, default_factory=default_factory, metadata=metadata, kw_only=kw_only)


class Method:
    """Base of every method config (subclasses are frozen dataclasses)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # the command that offers it: quantize, prune or arch
    needs_data: ClassVar[bool] = True  # False: calibration-free, no forward passes
    stats_reduction: ClassVar[str] = "sum"  # how processes' statistics join in data-parallel runs: "sum" or "max"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self)}

    def stats_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes of what it gathers about a linear of `shape` `(out, in)` while observing it (for the
        memory estimate)."""
        return 4 * shape[1]

    def work_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes it works in while changing a linear of `shape`: a float32 copy of the weight and its result."""
        return 2 * 4 * shape[0] * shape[1]

    @classmethod
    def summary(cls) -> str:
        """The first sentence of the class docstring: what the method does, for `--help`."""
        paragraph = textwrap.dedent(cls.__doc__ or cls.name).strip().split("\n\n")[0]
        return " ".join(paragraph.split()).split(". ")[0].rstrip(".")

    def changed_fields(self) -> dict[str, Any]:
        """The fields whose values differ from their defaults, in declaration order."""
        changed = {}
        for f in dataclasses.fields(self):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if getattr(self, f.name) != default:
                changed[f.name] = getattr(self, f.name)
        return changed

    def headline(self) -> list[str]:
        """The words of `describe` after the name (e.g. `W4 g64`); the shapes' bases add theirs."""
        return []

    def headline_fields(self) -> tuple[str, ...]:
        """The fields `headline` already says, left out of the `field=value` part of `describe`."""
        return ()

    def describe(self) -> str:
        """A short label: name, headline, then the other fields that differ from their defaults,
        e.g. `gptq W4 g64 damp=0.01`."""
        extra = [f"{key}={_text(value)}" for key, value in self.changed_fields().items()
                 if key not in self.headline_fields()]
        return " ".join([self.name, *self.headline(), *extra])


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "+".join(map(str, value))
    return str(value)


@dataclass(frozen=True)
class Selection:
    """Which linears a per-linear or per-block method changes (every block linear by default)."""

    include: tuple[str, ...] = option((), "fnmatch patterns of the linears to change, joined by +; default: all",
                                      kw_only=True)
    exclude: tuple[str, ...] = option((), "fnmatch patterns of linears left alone, joined by +", kw_only=True)
    head: bool = option(False, "also change the output head (lm_head; untied from the embeddings if tied)",
                        kw_only=True)

    def selects(self, name: str, linear: nn.Module) -> bool:
        if self.include and not any(fnmatch.fnmatch(name, pattern) for pattern in self.include):
            return False
        return not any(fnmatch.fnmatch(name, pattern) for pattern in self.exclude)


class LinearMethod(Selection, Method):
    """A method applied to each selected linear, from statistics of its inputs."""

    true_sequential: ClassVar[bool] = False  # observe each group after the ones before changed
    input_only_stats: ClassVar[bool] = False  # stats depend on the input alone: linears fed one tensor share them

    def check(self, name: str, linear: nn.Module) -> None:
        """Raise a clear error if this linear cannot take the method (before any work)."""

    def init_stats(self, linear: nn.Module) -> Any:
        return None

    def observe(self, stats: Any, x: Tensor) -> Any:  # x: [tokens, in]
        return stats

    def apply(self, linear: nn.Module, stats: Any, name: str) -> nn.Module | None:
        raise NotImplementedError


class BlockMethod(Selection, Method):
    """A method applied to a whole block, given its inputs and a way to run it."""

    def check(self, name: str, linear: nn.Module) -> None:
        """Raise a clear error if this linear cannot take the method (before any work)."""

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


SHAPES = (LinearMethod, BlockMethod, ModelMethod)


def shape_of(cls: type[Method]) -> type[Method]:
    """The one shape `cls` has, or a TypeError."""
    shapes = [shape for shape in SHAPES if issubclass(cls, shape)]
    if len(shapes) != 1:
        raise TypeError(f"{cls.__name__} must be exactly one of LinearMethod, BlockMethod and ModelMethod; "
                        f"it is {[s.__name__ for s in shapes] or 'none'}")
    return shapes[0]


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: file the method under `cls.name`, checking its shape and kind."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if cls.kind not in KINDS:
        raise TypeError(f"{cls.__name__}.kind must be one of {KINDS}, got {cls.kind!r}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a frozen dataclass to be registered")
    if shape_of(cls) is BlockMethod and not cls.needs_data:
        raise TypeError(f"{cls.__name__}: a block method runs on its calibration inputs, so it needs data")
    if METHODS.get(cls.name, cls) is not cls:
        raise TypeError(f"method name {cls.name!r} is taken by {METHODS[cls.name].__name__}")
    METHODS[cls.name] = cls
    return cls


def methods_of(kind: str) -> dict[str, type[Method]]:
    """The registered methods a command offers, by name."""
    return {name: cls for name, cls in sorted(METHODS.items()) if cls.kind == kind}


def method_from(spec: dict[str, Any]) -> Method:
    """A config from `{"method": name, field: value, ...}` (a recipe stage, a saved record)."""
    fields = dict(spec)
    name = fields.pop("method", None)
    if name not in METHODS:
        known = ", ".join(sorted(METHODS)) or "(none registered)"
        raise ValueError(f"unknown method {name!r}: expected one of {known}")
    cls = METHODS[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"method {name!r} has no field(s) {unknown}; its fields: {sorted(allowed)}")
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})
