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
from tcompress.eval.lmeval import WIKITEXT, harness, table, task_names, wikitext_check
from tcompress.eval.lmeval import evaluate as evaluate_tasks
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
    evaluate.add_argument("--tasks", type=task_list, metavar="T1,T2",
                          help="run lm-evaluation-harness tasks instead, on the model as loaded (packed modules "
                          f"run as they are): harness task names, local task YAML files, or {WIKITEXT} "
                          "(WikiText-2's test articles from the local copy, with tcompress's own figures beside "
                          "the harness's); --seqlen is the longest window")
    evaluate.add_argument("--limit", type=positive, help="with --tasks: the first N documents of each task")
    evaluate.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    evaluate.set_defaults(run=run)


def task_list(text: str) -> list[str]:
    tasks = [task.strip() for task in text.split(",") if task.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError(f"expected comma-separated task names or YAML files, got {text!r}")
    return tasks


def run(args: argparse.Namespace) -> None:
    if args.limit and not args.tasks:
        raise ValueError("--limit goes with --tasks (use --windows for tcompress's own evaluation)")
    if args.tasks:
        harness()  # a clear error before loading the model if lm-eval is missing
        task_names(args.tasks)  # and for task files that do not exist
    model, processor = load(args.model)
    kind = model_kind(model)
    if args.tasks:
        run_tasks(args, model, processor)
        return
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


def run_tasks(args: argparse.Namespace, model, tokenizer) -> None:
    """lm-evaluation-harness on the loaded model, and tcompress's figures for its WikiText-2 task."""
    if model_kind(model) != "causal-lm":
        raise ValueError("--tasks runs lm-evaluation-harness, which takes causal language models")
    results, lm = evaluate_tasks(model, tokenizer, args.tasks, limit=args.limit, max_length=args.seqlen,
                                 batch_size=args.batch_size)
    print(table(results))
    output = {"model": args.model, "tasks": args.tasks, "limit": args.limit, "results": results["results"]}
    if WIKITEXT in results["results"]:
        check = wikitext_check(model, lm, results, args.limit)
        rows = [{"figure": unit, "lm-eval": check[f"lm-eval {unit}"], "tcompress": check[f"tcompress {unit}"]}
                for unit in ("word_perplexity", "byte_perplexity", "token_perplexity")]
        print(f"\n{WIKITEXT}: the harness's figures and tcompress's own forward on the same {check['tokens']:,} "
              f"tokens and windows\n" + format_table(rows))
        output["tcompress"] = check
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=2, default=str) + "\n")
