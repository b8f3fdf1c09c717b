"""`tcompress bench`: latency, throughput and memory at several batch sizes."""

from __future__ import annotations

import argparse
from pathlib import Path

from tcompress.checkpoint.load import load
from tcompress.cli.common import EPILOG, int_list, positive
from tcompress.eval.harness import ENGINES, BenchSettings, bench


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench", help="latency, throughput and memory at several batch sizes",
                                 epilog=EPILOG + " Several models are measured in one run and plotted together.")
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 2, 4, 8, 16], help="default 1,2,4,8,16")
    parser.add_argument("--seqlen", type=positive, default=128, help="prompt / sequence length (default 128)")
    parser.add_argument("--new-tokens", type=positive, default=32, help="decode steps per run (default 32)")
    parser.add_argument("--repeats", type=positive, default=5, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--rounds", type=positive, default=1,
                        help="measure every model this many times in turn and keep the median round (default 1; "
                        "3 or more on a shared machine)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="LM decoding: tcompress's static-cache decoder (Llama family), the model's own "
                        "forward and cache (hf), or auto: the decoder where it applies (default)")
    parser.add_argument("--out", default="runs/bench", help="folder for bench.json and bench.png")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    settings = BenchSettings(batch_sizes=tuple(args.batch_sizes), seqlen=args.seqlen, new_tokens=args.new_tokens,
                             repeats=args.repeats, warmup=args.warmup, engine=args.engine, rounds=args.rounds)
    models = {spec: load(spec)[0] for spec in args.models}
    report = bench(models, settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.to_json(out / "bench.json")
    report.plot(out / "bench.png")
    print(report.facts_table() + "\n\n" + report.table())
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")
