"""`tcompress generate`: greedy text continuation through the lean decoder (no transformers
model code in the process)."""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tokenizers import Tokenizer

from tcompress.checkpoint.load import local_folder
from tcompress.cli.common import positive
from tcompress.core.memory import PeakMemory
from tcompress.runtime.decoder import Decoder
from tcompress.runtime.lean import load_for_decoding


def add(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser(
        "generate", help="greedy text continuation through the lean decoder (no transformers model code)",
        description="Continue --prompt greedily with tcompress's decoder, on the model loaded by "
        "tc.runtime.load_for_decoding: a named model or a Llama-family folder (packed by tcompress or float), "
        "its tokenizer.json read by the tokenizers library.")
    generate.add_argument("model", metavar="MODEL", help="a named model (default, smollm2-135m) or a saved model "
                          "folder with tokenizer.json")
    generate.add_argument("--prompt", required=True, help="text to continue")
    generate.add_argument("--max-new-tokens", type=positive, default=64, help="default 64")
    generate.add_argument("--stats", action="store_true", help="print prefill time, decode tokens/s and peak RSS")
    generate.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    folder = local_folder(args.model)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"MODEL {args.model!r}: expected a saved model folder with tokenizer.json")
    with PeakMemory(torch.device("cpu")) as memory:
        model = load_for_decoding(folder)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        prompt = tokenizer.encode(args.prompt).ids
        if not prompt:
            raise ValueError("--prompt: the text encodes to no tokens")
        decoder = Decoder(model, max_length=len(prompt) + args.max_new_tokens)
        stop = getattr(model.config, "eos_token_id", None)
        stop = set(stop if isinstance(stop, list) else [stop])
        start = time.perf_counter()
        token = int(decoder.prefill(torch.tensor([prompt])).argmax(-1))
        prefilled = time.perf_counter()
        new, shown = [token], ""
        while token not in stop and len(new) < args.max_new_tokens:
            shown = _show(tokenizer.decode(new), shown)
            token = int(decoder.step(torch.tensor([token])).argmax(-1))
            new.append(token)
        done = time.perf_counter()
    _show(tokenizer.decode(new[:-1] if token in stop else new), shown, final=True)
    print()
    if args.stats:
        steps = len(new) - 1
        print(f"prompt {len(prompt)} tokens in {prefilled - start:.2f} s; {steps} decode steps at "
              f"{steps / max(done - prefilled, 1e-9):.1f} tokens/s; peak RSS {memory.peak / 2**20:.0f} MB",
              file=sys.stderr)


def _show(text: str, shown: str, final: bool = False) -> str:
    """Print what `text` adds to what was printed: whole characters only, until the `final` text."""
    if text.startswith(shown) and (final or not text.endswith("\ufffd")):
        print(text[len(shown):], end="", flush=True)
        return text
    return shown
