"""`tcompress eval`: perplexity (LMs), STS-B Spearman (encoders) or accuracy (image classifiers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tcompress.checkpoint.load import load
from tcompress.cli.common import EPILOG, positive
from tcompress.data.vision import images
from tcompress.eval.embeddings import stsb_spearman
from tcompress.eval.harness import model_kind
from tcompress.eval.lm import perplexity
from tcompress.eval.vision import accuracy
from tcompress.report import format_table


def add(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval", help="perplexity (LMs), STS-B Spearman (encoders) or accuracy (image classifiers)", epilog=EPILOG)
    evaluate.add_argument("model", metavar="MODEL")
    evaluate.add_argument("--data", help="pydoc, wikitext2, c4, ptb or a text file (LMs); an STS-B .tsv "
                          "(encoders); fashion-mnist, mnist or an image folder (image classifiers)")
    evaluate.add_argument("--seqlen", type=positive, default=2048, help="tokens per window (default 2048)")
    evaluate.add_argument("--windows", type=positive, help="use only the first N windows (images: first N)")
    evaluate.add_argument("--batch-size", type=positive, default=1, help="windows or images per forward")
    evaluate.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    model, processor = load(args.model)
    kind = model_kind(model)
    if kind == "causal-lm":
        if args.data is None:
            raise ValueError("eval: --data is required for a language model (e.g. --data pydoc)")
        value = perplexity(model, processor, args.data, seqlen=args.seqlen, windows=args.windows,
                           batch_size=args.batch_size)
        result = {"model": args.model, "data": args.data, "seqlen": args.seqlen, "windows": args.windows,
                  "perplexity": value}
    elif kind == "encoder":
        if args.data is None or not str(args.data).endswith(".tsv"):
            raise ValueError("eval: an encoder is measured on STS-B: pass --data path/to/stsb/dev.tsv")
        result = {"model": args.model, "data": args.data, "stsb_spearman": stsb_spearman(model, processor, args.data)}
    else:
        test = images(args.data or "fashion-mnist", processor, limit=args.windows)
        result = {"model": args.model, "data": args.data, "images": len(test),
                  "accuracy": accuracy(model, test, batch_size=args.batch_size)}
    print(format_table([result]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
