"""tcompress: make transformer models smaller and faster, and measure what it cost.

    import tcompress as tc
    model, tok = tc.load("default")
    print(tc.eval.perplexity(model, tok, "pydoc", seqlen=512, windows=4))
    tc.save(model, "out/")

The package is layered (see the README's "Architecture"): `core`, `report` and `data` at the
bottom, then `kernels`, `models` and `packed`, `checkpoint`, the `engine`, the methods
(`quantize`, `prune`), and `distill`, `eval`, `export` and `recipe` on top.
"""

from tcompress import (
                       checkpoint,
                       core,
                       data,
                       distill,
                       engine,
                       eval,
                       export,
                       kernels,
                       models,
                       packed,
                       prune,
                       quantize,
                       recipe,
                       report,
                       runtime,
                       solvers,
)
from tcompress.checkpoint import load, save
from tcompress.engine import METHODS, BlockMethod, LinearMethod, Method, ModelMethod, apply, register
from tcompress.eval.harness import BenchSettings, bench
from tcompress.models import adapter

__version__ = "0.1.0"

__all__ = ["apply", "bench", "BenchSettings", "save", "load", "adapter", "register", "Method", "LinearMethod",
           "BlockMethod", "ModelMethod", "METHODS", "checkpoint", "core", "data", "distill", "engine", "eval",
           "export", "kernels", "models", "packed", "prune", "quantize", "recipe", "report", "runtime", "solvers"]
