"""What the LLM benchmarks share: the measurement protocol's options, the model, its
calibration samples and evaluation windows, method configs in their one text form, and
printing rows as they come.

The protocol: the default model; WikiText-2 raw test (`DATA/wikitext2/wiki.test.raw`), the
first `--windows` non-overlapping windows of 2048 tokens; calibration of 128 samples x 512
tokens of `--calib`, seed 0. A method config is written as `engine.method_text` writes it,
`gptq:bits=4,group_size=64` (the fields that differ from the defaults); stages applied one
after the other are joined by `;` (`gptq;rtn:bits=8,head=true,include=lm_head;embeddings`);
configs are separated by spaces.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from torch import nn

import tcompress as tc

SEQLEN = 2048
CALIB_SAMPLES, CALIB_SEQLEN, CALIB_SEED = 128, 512, 0


def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="../shared/data", help="folder with wikitext2/wiki.test.raw and more")
    parser.add_argument("--calib", default="pydoc", help="calibration corpus or file (128 x 512 tokens, seed 0)")
    parser.add_argument("--windows", type=int, default=16, help="WikiText-2 windows of 2048 tokens")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON table")


@dataclass
class Protocol:
    """The model and data of one benchmark run, each loaded once when first asked for."""

    args: argparse.Namespace

    @cached_property
    def loaded(self) -> tuple[nn.Module, Any]:
        return tc.load(self.args.model)

    @property
    def model(self) -> nn.Module:
        return self.loaded[0]

    @property
    def tokenizer(self) -> Any:
        return self.loaded[1]

    @cached_property
    def calib(self):
        return tc.data.calibration(self.args.calib, self.tokenizer, n=CALIB_SAMPLES, seqlen=CALIB_SEQLEN,
                                   seed=CALIB_SEED)

    @cached_property
    def windows(self):
        text = Path(self.args.data) / "wikitext2" / "wiki.test.raw"
        return tc.data.windows(text, self.tokenizer, seqlen=SEQLEN, limit=self.args.windows)

    def perplexity(self, model: nn.Module) -> float:
        return tc.eval.perplexity(model, self.tokenizer, self.windows, seqlen=SEQLEN, progress=False)

    def describe(self) -> str:
        return (f"{self.args.model}: WikiText-2 perplexity ({self.args.windows} x {SEQLEN}), calibration "
                f"{self.args.calib} {CALIB_SAMPLES} x {CALIB_SEQLEN}")


def methods(texts: list[str]) -> list[tc.Method]:
    """Method configs from their text form, all validated before any work."""
    return [tc.engine.parse_method(text) for text in texts]


def stages(texts: list[str]) -> list[list[tc.Method]]:
    """Configs of one or more stages (joined by `;`), all validated before any work."""
    return [methods(text.split(";")) for text in texts]


def describe(config: list[tc.Method]) -> str:
    return " + ".join(method.describe() for method in config)


def show(rows: list[dict]) -> None:
    """Print rows as a table at once (long runs show each row as it is measured)."""
    print(tc.report.format_table([{k: (float(f"{v:.4g}") if isinstance(v, float) and math.isfinite(v) else v)
                                   for k, v in row.items()} for row in rows]), flush=True)
