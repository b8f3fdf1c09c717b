"""tcompress: make transformer models smaller and faster, and measure what it cost.

    import tcompress as tc
    model, tok = tc.load("default")
    print(tc.eval.perplexity(model, tok, "pydoc", seqlen=512, windows=4))
    tc.save(model, "out/")
"""

from tcompress import calib, data, distill, eval, methods, models, prune, quantize, recipe, report
from tcompress.apply import apply
from tcompress.eval.latency import BenchSettings, bench
from tcompress.export.checkpoint import save
from tcompress.methods import METHODS, BlockMethod, LinearMethod, Method, register
from tcompress.models import adapter, load

__version__ = "0.1.0"

__all__ = ["apply", "bench", "BenchSettings", "save", "load", "adapter", "register", "Method", "LinearMethod",
           "BlockMethod", "METHODS", "calib", "data", "distill", "eval", "methods", "models", "prune", "quantize", "recipe", "report"]
