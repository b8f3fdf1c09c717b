"""`tcompress quantize` and `tcompress prune`: apply one registered method and save the model.

Both commands list their methods and options from the registry (`cli/methods.py`). `prune`
also keeps its shortcuts for structured pruning: `--structured` for `--method structured`,
and `--heads`, `--channels`, `--blocks` for the parts that may shrink.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from torch import nn

from tcompress.checkpoint.load import load
from tcompress.checkpoint.save import save
from tcompress.cli.common import EPILOG, add_calibration_and_output, calibration_data, out_folder, positive
from tcompress.cli.methods import add_method_options, method_from_args
from tcompress.core.sizes import folder_bytes, tensor_bytes
from tcompress.data.text import windows
from tcompress.data.vision import images
from tcompress.engine.apply import apply
from tcompress.engine.method import Method, methods_of
from tcompress.engine.sequential import CHUNK_TOKENS
from tcompress.eval.harness import model_kind
from tcompress.eval.lm import perplexity
from tcompress.eval.vision import accuracy
from tcompress.export.formats import GRIDS, TARGETS, grid_text, requantized
from tcompress.report import format_table

DEFAULT_METHOD = {"quantize": "gptq", "prune": "sparsegpt"}
STRUCTURED_PARTS = ("heads", "channels", "blocks")


HELP = {"quantize": "quantize weights (packed int storage) and save the model",
        "prune": "prune weights (unstructured or N:M, stored sparse; or structured) and save the model"}


def add(commands: argparse._SubParsersAction) -> None:
    quantize = method_command(commands, "quantize")
    quantize.add_argument("--for", dest="target", choices=TARGETS,
                          help="the export it is for: quantize on the grid that format holds as it is "
                          "(gguf-q4_0: 4 bits, groups of 32, symmetric; gguf-q8_0: 8 bits, groups of 32, symmetric; "
                          "compressed-tensors: symmetric, which transformers and lm-eval load quantized), so the "
                          "export writes the codes without requantizing")
    quantize.set_defaults(run=run_quantize)
    prune = method_command(commands, "prune")
    shortcuts = prune.add_argument_group("structured shortcuts: a smaller dense model that plain transformers loads")
    shortcuts.add_argument("--structured", action="store_true", help="the same as --method structured")
    for part in STRUCTURED_PARTS:
        shortcuts.add_argument(f"--{part}", action="store_true", help=f"with --structured: {part} may shrink "
                               "(adds to --parts; none given: heads and channels)")
    prune.set_defaults(run=run_prune)


def method_command(commands: argparse._SubParsersAction, kind: str) -> argparse.ArgumentParser:
    """The command of one kind of method: MODEL, --method and its fields, calibration and output."""
    parser = commands.add_parser(
        kind, help=HELP[kind], description=methods_text(kind), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG + " Options a method does not have are refused; those not given take the method's default.")
    parser.add_argument("model", metavar="MODEL")
    add_method_options(parser, kind, DEFAULT_METHOD[kind])
    add_calibration_and_output(parser, "quantized" if kind == "quantize" else "pruned")
    parser.add_argument("--calib-chunk", type=positive, default=CHUNK_TOKENS, metavar="TOKENS",
                        help=f"calibration tokens each block runs over at once (default {CHUNK_TOKENS}; "
                        "fewer hold less memory)")
    return parser


def methods_text(kind: str) -> str:
    """The command's methods, one a line, from the registry."""
    lines = [f"  {name:12} {cls.summary()}" for name, cls in methods_of(kind).items()]
    return f"{kind.capitalize()} MODEL with one method and save it, packed.\n\nmethods:\n" + "\n".join(lines)


def run_quantize(args: argparse.Namespace) -> None:
    if args.target is None:
        compress_and_report(args, method_from_args(args, "quantize"))
        return
    method = method_from_args(args, "quantize", GRIDS[args.target], why=f"--for {args.target}")
    print(f"--for {args.target}: quantizing on its grid ({grid_text(args.target)})")
    model = compress_and_report(args, method)
    left = requantized(model, args.target)
    if left:
        print(f"note: {len(left)} linears (e.g. {left[0]}) hold what {args.target} cannot store (an input scale, "
              f"outlier columns or fractional zeros) and will be requantized at export")


def run_prune(args: argparse.Namespace) -> None:
    chosen_parts = tuple(part for part in STRUCTURED_PARTS if getattr(args, part))
    if args.structured:
        args.method = "structured"
        if chosen_parts:
            args.parts = chosen_parts
    elif chosen_parts:
        raise ValueError(f"--{chosen_parts[0]} goes with --structured (or give --method structured --parts ...)")
    compress_and_report(args, method_from_args(args, "prune"))


def compress_and_report(args: argparse.Namespace, method: Method) -> nn.Module:
    """Load, apply `method`, save to --out; print size, time and (with --eval) quality before
    and after."""
    out = out_folder(args.out)
    model, processor = load(args.model)
    calib = calibration_data(args, model, processor) if method.needs_data else None
    measure = quality(args, model, processor) if args.eval else None
    rows = [{"model": "float", "MB in memory": tensor_bytes(model) / 2**20}]
    if measure:
        rows[0].update(measure(model))
    start = time.perf_counter()
    apply(model, method, calib, chunk_tokens=args.calib_chunk)
    seconds = time.perf_counter() - start
    save(model, out)
    rows.append({"model": method.describe(), "MB in memory": tensor_bytes(model) / 2**20,
                 "MB on disk": folder_bytes(out) / 2**20, "seconds": seconds})
    if measure:
        rows[1].update(measure(model))
    print(format_table([{key: row.get(key) for key in rows[1]} for row in rows]))
    print(f"\nwrote {out}")
    return model


def quality(args: argparse.Namespace, model: nn.Module, processor: Any) -> Callable[[nn.Module], dict]:
    """The `--eval` measure: perplexity on windows of DATA, or an image classifier's accuracy."""
    if model_kind(model) == "image-classifier":
        test = images(args.eval, processor)
        return lambda m: {"accuracy": accuracy(m, test, progress=False)}
    ids = windows(args.eval, processor, seqlen=args.eval_seqlen, limit=args.eval_windows)
    return lambda m: {"perplexity": perplexity(m, processor, ids, seqlen=args.eval_seqlen)}
