"""`tcompress export`: write a model for another runtime, load it back, and compare."""

from __future__ import annotations

import argparse
from pathlib import Path

from tcompress.checkpoint.load import load
from tcompress.cli.common import EPILOG
from tcompress.export.compressed import export_compressed_tensors, load_compressed_tensors
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
    requantized = 0
    if args.format == "compressed-tensors":
        result = export_compressed_tensors(model, tok, out)
        requantized = result.requantized
        exported, packed = load_compressed_tensors(out)
        print(f"{result.from_codes} linears written from their own codes, {result.requantized} requantized; "
              f"loaded back {'quantized' if packed else 'dequantized (asymmetric zero points)'}")
    elif args.format == "hf":
        export_hf(model, tok, out)
        exported, _ = load(out)
    else:
        qtype = args.format.removeprefix("gguf-")
        result = export_gguf(model, tok, out, qtype, embeddings=args.embeddings)
        requantized = result.requantized
        print(f"{result.tensors} tensors; {result.from_codes} linears written from their own codes, "
              f"{result.requantized} tensors requantized; embeddings {result.embeddings.upper()}")
        exported, _ = load(out)
    size = out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.glob("*.safetensors"))
    check = compare(model, exported, tok)
    if args.format.startswith("gguf") and llama_cpp_available():  # reported, not gated: llama.cpp rounds
        try:  # activations to 8 bits in quantized products
            in_llama = compare_in_llama_cpp(model, out, tok)
            print(f"llama.cpp runs it: top-1 agreement {in_llama.top1:.4f}, KL {in_llama.kl:.5f} nats/token")
        except ValueError as error:  # e.g. a vocabulary without BPE merges, which llama.cpp refuses
            print(f"llama.cpp could not load it: {error}")
    floor = args.min_agreement if args.min_agreement is not None else (0.90 if requantized else 0.99)
    print(f"{args.format}: {size / 2**20:.1f} MB; loaded back: top-1 agreement {check.top1:.4f}, "
          f"KL {check.kl:.5f} nats/token on the check prompts")
    if check.top1 < floor:
        raise ValueError(f"the export agrees with the model on {check.top1:.2%} of next tokens, below {floor:.0%}")
    print(f"wrote {out}")
