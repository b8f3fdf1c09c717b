"""Recipes: a YAML list of stages, applied in order; the calibration data they share.

    calibration: {source: pydoc, n: 128, seqlen: 512, seed: 0}
    stages:
      - {method: gptq, bits: 4, group_size: 64}

Each stage is a method config by its registered name and fields, exactly as in Python
(`tc.quantize.GPTQ(bits=4, group_size=64)`) and in `tcompress.json`. Every stage is built
and validated before any of them runs, so a typo fails at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from tcompress.data.text import calibration
from tcompress.engine.apply import apply
from tcompress.engine.method import Method, method_from

CALIBRATION_FIELDS = {"source", "n", "seqlen", "seed", "split"}
DEFAULT_CALIBRATION = {"source": "pydoc", "n": 128, "seqlen": 512, "seed": 0}


@dataclass(frozen=True)
class Recipe:
    stages: tuple[Method, ...]
    calibration: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CALIBRATION))

    @property
    def needs_data(self) -> bool:
        return any(stage.needs_data for stage in self.stages)

    def run(self, model: nn.Module, tokenizer: Any = None, progress: bool = True) -> nn.Module:
        """Apply every stage in order; calibration text is tokenized once, if any stage needs it."""
        calib = None
        if self.needs_data:
            options = dict(self.calibration)
            calib = calibration(options.pop("source", "pydoc"), tokenizer, **options)
        for stage in self.stages:
            apply(model, stage, calib, progress=progress)
        return model


def parse(spec: dict[str, Any]) -> Recipe:
    """A recipe from its parsed YAML/JSON form."""
    if not isinstance(spec, dict) or "stages" not in spec:
        raise ValueError("a recipe is a mapping with a 'stages' list (and optionally 'calibration')")
    stages = spec["stages"]
    if not isinstance(stages, list) or not stages:
        raise ValueError("recipe 'stages' must be a non-empty list of {method: NAME, field: value, ...}")
    built = []
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise ValueError(f"recipe stage {index} must be a mapping like {{method: gptq, bits: 4}}, got {stage!r}")
        try:
            built.append(method_from(stage))
        except (TypeError, ValueError) as error:
            raise ValueError(f"recipe stage {index}: {error}") from None
    options = spec.get("calibration", {})
    unknown = set(options) - CALIBRATION_FIELDS
    if unknown:
        raise ValueError(f"recipe 'calibration' has unknown field(s) {sorted(unknown)}; allowed: {sorted(CALIBRATION_FIELDS)}")
    return Recipe(tuple(built), {**DEFAULT_CALIBRATION, **options})


def load(path: str | os.PathLike) -> Recipe:
    """Read a YAML recipe file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {str(path)!r}")
    return parse(yaml.safe_load(path.read_text()))
