"""What the commands share: argument types, the calibration, evaluation and output options,
and loading the calibration data a model takes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from tcompress.data.text import calibration
from tcompress.data.vision import images
from tcompress.eval.harness import model_kind

EPILOG = ("MODEL is a named offline model (default, smollm2-135m, minilm, vit-fmnist), a Hugging Face folder, "
          "a .gguf file or a hub id.")


def positive(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def group_size(text: str) -> int | None:
    """argparse type: a positive integer, or 'channel' for per-channel."""
    return None if text == "channel" else positive(text)


UNITS = {"gib": 2**30, "gb": 10**9, "g": 10**9, "mib": 2**20, "mb": 10**6, "m": 10**6}


def memory_size(text: str) -> int:
    """argparse type: an amount of memory with its unit, like 4GB, 2.5GiB or 800MB, in bytes."""
    lowered = text.strip().lower()
    for unit in sorted(UNITS, key=len, reverse=True):
        if lowered.endswith(unit):
            try:
                value = float(lowered[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return int(value * UNITS[unit])
            break
    raise argparse.ArgumentTypeError(f"expected an amount of memory with its unit (4GB, 2.5GiB, 800MB), got {text!r}")


def out_folder(path: str) -> Path:
    """`--out` as a folder path, refused if it names a file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; expected a folder")
    return out


def add_calibration_and_output(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--calib", help="calibration data: a corpus name or text file (default pydoc), or for an "
                        "image classifier an image set (default fashion-mnist)")
    parser.add_argument("--calib-samples", type=positive, default=128, help="default 128")
    parser.add_argument("--calib-seqlen", type=positive, default=512, help="tokens a sample (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed (default 0)")
    add_eval_and_output(parser, what, "also print perplexity (image classifiers: accuracy) before and after on DATA")


def add_eval_and_output(parser: argparse.ArgumentParser, what: str, eval_help: str) -> None:
    parser.add_argument("--eval", metavar="DATA", help=eval_help)
    parser.add_argument("--eval-windows", type=positive, default=16, help="default 16 (images: all)")
    parser.add_argument("--eval-seqlen", type=positive, default=2048, help="default 2048")
    parser.add_argument("--out", required=True, help=f"folder to save the {what} model to")


def calibration_data(args: argparse.Namespace, model: nn.Module, processor: Any) -> Any:
    """The calibration samples the flags ask for: token ids `[n, seqlen]`, or for an image
    classifier `n` training images `[n, c, h, w]`."""
    if model_kind(model) == "image-classifier":
        return images(args.calib or "fashion-mnist", processor, split="train", limit=args.calib_samples).pixel_values
    return calibration(args.calib or "pydoc", processor, n=args.calib_samples, seqlen=args.calib_seqlen,
                       seed=args.seed)
