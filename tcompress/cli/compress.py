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

from tcompress.checkpoint.load import empty_model, load
from tcompress.checkpoint.save import save
from tcompress.cli.common import (
    EPILOG,
    add_calibration_and_output,
    calibration_data,
    memory_size,
    out_folder,
    positive,
)
from tcompress.cli.methods import add_method_options, method_from_args
from tcompress.core.sizes import folder_bytes, tensor_bytes
from tcompress.data.text import windows
from tcompress.data.vision import images
from tcompress.engine.apply import apply
from tcompress.engine.method import Method, methods_of
from tcompress.engine.peak import GB, MemoryEstimate, peak_rss, predict_peak
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
    memory = parser.add_argument_group("memory")
    memory.add_argument("--lazy", action="store_true", help="stream the model from its safetensors files, one block "
                        "in memory at a time, and write the result a shard a block (for models larger than memory)")
    memory.add_argument("--max-memory", type=memory_size, metavar="SIZE", help="refuse a run whose predicted peak "
                        "is above SIZE (4GB, 2.5GiB, 800MB) before any work; streams (--lazy) by itself when only "
                        "that fits")
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
    lazy, predicted = memory_plan(args, method)
    model, processor = load(args.model, lazy=lazy)
    if predicted is None and args.max_memory:  # a GGUF file or packed folder: its shapes are known once loaded
        predicted = checked_estimate(args, model, method, lazy)
    calib = calibration_data(args, model, processor) if method.needs_data else None
    measure = quality(args, model, processor) if args.eval else None
    rows = [{"model": "float", "MB in memory": tensor_bytes(model) / 2**20}]
    if measure and not lazy:  # a streamed model is evaluated once saved, and its float original not at all
        rows[0].update(measure(model))
    start = time.perf_counter()
    apply(model, method, calib, chunk_tokens=args.calib_chunk)
    seconds = time.perf_counter() - start
    save(model, out)
    rows.append({"model": method.describe(), "MB in memory": tensor_bytes(model) / 2**20,
                 "MB on disk": folder_bytes(out) / 2**20, "seconds": seconds})
    if measure:
        rows[1].update(measure(load(out)[0] if lazy else model))
    print(format_table([{key: row.get(key) for key in rows[1]} for row in rows]))
    print(f"\npeak memory {peak_rss() / GB:.2f} GB" + (f" (predicted {predicted.total / GB:.2f} GB)" if predicted else ""))
    print(f"wrote {out}")
    return model


def memory_plan(args: argparse.Namespace, method: Method) -> tuple[bool, MemoryEstimate | None]:
    """Whether to stream the model, and the run's predicted peak: --lazy streams; under
    --max-memory, a run that fits in memory runs there, one that fits only streamed streams,
    and one that fits neither is refused, before anything is loaded."""
    empty = empty_model(args.model)
    if empty is None or model_kind(empty) == "image-classifier":  # only loading tells; patches, not tokens
        return args.lazy, None
    estimate = {lazy: run_estimate(args, empty, method, lazy) for lazy in (False, True)}
    lazy = args.lazy
    if args.max_memory and not lazy and estimate[False].total > args.max_memory >= estimate[True].total:
        print(f"streaming the model from its files (--lazy): in memory it would take {estimate[False].text()}, "
              f"above --max-memory")
        lazy = True
    check_budget(args, estimate[lazy], lazy)
    return lazy, estimate[lazy]


def run_estimate(args: argparse.Namespace, model: nn.Module, method: Method, lazy: bool) -> MemoryEstimate:
    samples = args.calib_samples if method.needs_data else 0
    return predict_peak(model, method, samples, args.calib_seqlen, lazy=lazy, chunk_tokens=args.calib_chunk)


def checked_estimate(args: argparse.Namespace, model: nn.Module, method: Method, lazy: bool) -> MemoryEstimate:
    estimate = run_estimate(args, model, method, lazy)
    check_budget(args, estimate, lazy)
    return estimate


def check_budget(args: argparse.Namespace, estimate: MemoryEstimate, lazy: bool) -> None:
    """Refuse a run predicted above --max-memory, saying what to lower."""
    if not args.max_memory or estimate.total <= args.max_memory:
        return
    advice = "--calib-samples or --calib-seqlen (the calibration activations grow with both)"
    if not lazy:
        advice += ", or stream the model with --lazy"
    raise ValueError(f"the run is predicted to peak at {estimate.text()}, above --max-memory "
                     f"{args.max_memory / GB:.2f} GB: lower {advice}")


def quality(args: argparse.Namespace, model: nn.Module, processor: Any) -> Callable[[nn.Module], dict]:
    """The `--eval` measure: perplexity on windows of DATA, or an image classifier's accuracy."""
    if model_kind(model) == "image-classifier":
        test = images(args.eval, processor)
        return lambda m: {"accuracy": accuracy(m, test, progress=False)}
    ids = windows(args.eval, processor, seqlen=args.eval_seqlen, limit=args.eval_windows)
    return lambda m: {"perplexity": perplexity(m, processor, ids, seqlen=args.eval_seqlen)}
