"""Peak memory and time of a layer-wise GPTQ pass against the size of the chunks the
calibration batch runs in.

    python benchmarks/calibration_memory.py [--calib ...] [--chunks 65536 16384 8192 4096] [--method gptq]

Each chunk size runs in a fresh process, since the kernel's high-water mark of resident
memory (`ru_maxrss`) is one a process: its peak RSS is the figure `/usr/bin/time -v` prints.
65,536 tokens (all 128 x 512 calibration samples at once) is how the engine ran before it
ran chunks. "codes equal" is the share of the quantized weights' codes that equal the first
row's (summing a Hessian over chunks changes only its float rounding order); the WikiText-2
perplexity is the protocol's (`--windows 0` skips it), measured after the peak is read.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import Protocol, add_protocol_options, show

import tcompress as tc
from tcompress.engine.sequential import sequential
from tcompress.packed import QuantLinear


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def child(args: argparse.Namespace) -> None:
    """One pass at one chunk size; prints its figures as a JSON line and saves the codes."""
    protocol = Protocol(args)
    model, calib = protocol.model, protocol.calib
    loaded = peak_rss_mb()
    start = time.perf_counter()
    sequential(model, calib, tc.engine.parse_method(args.method), chunk_tokens=args.child, progress=False)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    torch.save({name: m.codes() for name, m in model.named_modules() if isinstance(m, QuantLinear)}, args.codes)
    ppl = protocol.perplexity(model) if args.windows else None
    print(json.dumps({"seconds": seconds, "loaded_mb": loaded, "peak_mb": peak, "ppl": ppl}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_options(parser)
    parser.add_argument("--chunks", type=int, nargs="+", default=[65536, 16384, 8192, 4096],
                        help="calibration tokens a block runs over at once (the first row is the reference)")
    parser.add_argument("--method", default="gptq", help="a per-linear method in its text form")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--codes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    tc.engine.parse_method(args.method)  # refuse a bad config before any run
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for chunk in args.chunks:
            codes = Path(tmp) / f"codes-{chunk}.pt"
            command = [sys.executable, __file__, "--child", str(chunk), "--codes", str(codes), "--model", args.model,
                       "--calib", args.calib, "--method", args.method, "--data", args.data,
                       "--windows", str(args.windows)]
            printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(printed.splitlines()[-1])
            mine = torch.load(codes)
            reference = reference or mine
            equal = sum(int((mine[n] == reference[n]).sum()) for n in mine) / sum(c.numel() for c in mine.values())
            rows.append({"chunk tokens": chunk, "peak RSS GB": result["peak_mb"] / 1024,
                         "after loading GB": result["loaded_mb"] / 1024, "pass seconds": result["seconds"],
                         "time vs first": result["seconds"] / rows[0]["pass seconds"] if rows else 1.0,
                         "codes equal": equal, "wt2 ppl": result["ppl"]})
            show(rows[-1:])
    print(f"\n{args.method} on {args.model}, calibration {args.calib} 128 x 512 (seed 0)")
    show(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration_memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
