"""`tcompress export`: write a model for another runtime, load it back, and compare."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from tcompress.checkpoint.load import load
from tcompress.cli.common import EPILOG
from tcompress.core.files import written_atomically
from tcompress.core.sizes import folder_bytes
from tcompress.export.compressed import export_compressed_tensors, load_compressed_tensors
from tcompress.export.formats import GRIDS, advice
from tcompress.export.gguf import export_gguf
from tcompress.export.plain import export_hf
from tcompress.export.verify import compare, compare_in_llama_cpp, llama_cpp_available

FORMATS = ("compressed-tensors", "gguf-q8_0", "gguf-q4_0", "gguf-f16", "gguf-f32", "hf")


def add(commands: argparse._SubParsersAction) -> None:
    epilog = EPILOG
    export = commands.add_parser(
        "export", help="write a model for vLLM (compressed-tensors), llama.cpp (GGUF) or any runtime (plain HF float), "
        "verified by loading it back",
        epilog=epilog + " The export is loaded back (from_pretrained, or transformers' GGUF loader) and its "
        "next-token predictions compared with the model's on a fixed prompt set; the command fails below "
        "--min-agreement.")
    export.add_argument("model", metavar="MODEL")
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="compressed-tensors: a quantized model's packed codes, as llm-compressor writes them (vLLM, "
                        "transformers); gguf-q8_0 / gguf-q4_0: llama.cpp (Llama family); gguf-f16 / gguf-f32: float GGUF, "
                        "for llama.cpp's own quantizer; hf: dequantized float folder")
    export.add_argument("--out", required=True, help="the .gguf file, or the folder (compressed-tensors, hf)")
    export.add_argument("--embeddings", choices=["q8_0", "f16", "f32"],
                        help="GGUF: the embedding table's type (default: as the model holds it, Q8_0 for an 8-bit "
                        "table, else float; q8_0 makes a float table 4x smaller at some cost in agreement)")
    export.add_argument("--min-agreement", type=float,
                        help="top-1 agreement required (default 0.99; 0.90 where weights had to be requantized)")
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.format.startswith("gguf") and out.suffix != ".gguf":
        raise ValueError(f"--out {str(out)!r}: a GGUF export is a file ending in .gguf")
    model, tok = load(args.model)
    note = advice(model, args.format) if args.format in GRIDS else None
    if note:
        print(f"note: {note}")
    with written_atomically(out) as tmp:  # a refused export leaves nothing at --out
        exported, requantized = write(args, model, tok, tmp)
        size = tmp.stat().st_size if tmp.is_file() else folder_bytes(tmp)
        check = compare(model, exported, tok)
        if args.format.startswith("gguf") and llama_cpp_available():  # reported, not gated: llama.cpp rounds
            try:  # activations to 8 bits in quantized products
                in_llama = compare_in_llama_cpp(model, tmp, tok)
                print(f"llama.cpp runs it: top-1 agreement {in_llama.top1:.4f}, KL {in_llama.kl:.5f} nats/token")
            except ValueError as error:  # e.g. a vocabulary without BPE merges, which llama.cpp refuses
                print(f"llama.cpp could not load it: {error}")
        floor = args.min_agreement if args.min_agreement is not None else (0.90 if requantized else 0.99)
        print(f"{args.format}: {size / 2**20:.1f} MB; loaded back: top-1 agreement {check.top1:.4f}, "
              f"KL {check.kl:.5f} nats/token on the check prompts")
        if check.top1 < floor:
            raise ValueError(f"the export agrees with the model on {check.top1:.2%} of next tokens, below "
                             f"{floor:.0%}; nothing was written to {str(out)!r}")
    print(f"wrote {out}")


def write(args: argparse.Namespace, model: nn.Module, tok: Any, path: Path) -> tuple[nn.Module, int]:
    """Write the export to `path` and load it back; the loaded model and how many tensors were requantized."""
    if args.format == "compressed-tensors":
        result = export_compressed_tensors(model, tok, path)
        exported, packed = load_compressed_tensors(path)
        print(f"{result.from_codes} linears written from their own codes, {result.requantized} requantized; "
              f"loaded back {'quantized' if packed else 'dequantized (asymmetric zero points)'}")
        return exported, result.requantized
    if args.format == "hf":
        export_hf(model, tok, path)
        return load(path)[0], 0
    result = export_gguf(model, tok, path, args.format.removeprefix("gguf-"), embeddings=args.embeddings)
    print(f"{result.tensors} tensors; {result.from_codes} linears written from their own codes, "
          f"{result.requantized} tensors requantized; embeddings {result.embeddings.upper()}")
    return load(path)[0], result.requantized
