"""Foundation figures for the default model: load time (cold and cached), WikiText-2
perplexity (first 16 windows of 2048 tokens) and the latency table at batch 1-16.

    python benchmarks/foundation.py [--data ../shared/data] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import tcompress as tc


def timed_load(spec: str) -> float:
    start = time.perf_counter()
    tc.load(spec)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder with wikitext2/wiki.test.raw")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as cache:
        saved = os.environ.get("TCOMPRESS_CACHE")
        os.environ["TCOMPRESS_CACHE"] = cache
        cold = timed_load("default")
        cached = timed_load("default")
        os.environ.pop("TCOMPRESS_CACHE") if saved is None else os.environ.__setitem__("TCOMPRESS_CACHE", saved)

    model, tok = tc.load("default")
    text = Path(args.data) / "wikitext2" / "wiki.test.raw"
    start = time.perf_counter()
    ppl = tc.eval.perplexity(model, tok, text, seqlen=2048, windows=args.windows)
    ppl_seconds = time.perf_counter() - start

    report = tc.bench({"default fp32": model}, tc.BenchSettings(batch_sizes=(1, 2, 4, 8, 16)))
    report.to_json(out / "foundation_bench.json")
    report.plot(out / "foundation_bench.png")
    summary = {"load_cold_s": cold, "load_cached_s": cached, "wikitext2_ppl": ppl, "windows": args.windows,
               "ppl_seconds": ppl_seconds}
    tc.report.write_json(out / "foundation.json", summary)
    print(tc.report.format_table([summary]))
    print()
    print(report.facts_table())
    print()
    print(report.table())


if __name__ == "__main__":
    main()
