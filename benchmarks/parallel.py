"""Data-parallel calibration: GPTQ W4 g64 on the default model in one process, then under
`accelerate launch --num_processes N` (gloo on CPU), each process with its share of the
128 x 512 calibration samples and the Hessians summed across processes.

    python benchmarks/parallel.py [--calib c4-file] [--processes 2]

Prints the time per block of each run and the share of the quantized weights' codes the
N-process run has equal to the one-process run's (summation order aside, they are the same).
On a machine of C cores, one process runs C threads and each of N processes C / N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CALIB_SAMPLES, CALIB_SEED, CALIB_SEQLEN, show

import tcompress as tc
from tcompress.engine.parallel import world

METHOD = "gptq:bits=4,group_size=64"


def child(args: argparse.Namespace) -> None:
    model, tokenizer = tc.load("default")
    calib = tc.data.calibration(args.calib, tokenizer, n=CALIB_SAMPLES, seqlen=CALIB_SEQLEN, seed=CALIB_SEED)
    start = time.perf_counter()
    tc.apply(model, tc.engine.parse_method(METHOD), calib, progress=False)
    seconds = time.perf_counter() - start
    rank, processes = world()
    if rank == 0:
        codes = {name: m.codes() for name, m in model.named_modules() if hasattr(m, "codes")}
        torch.save({"seconds": seconds, "blocks": model.config.num_hidden_layers, "processes": processes,
                    "codes": codes}, args.child)


def run(args: argparse.Namespace, out: Path, processes: int) -> dict:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [__file__, "--child", str(out), "--calib", args.calib]
    if processes == 1:
        done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True)
    else:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", str(processes),
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               *command], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"run failed:\n{done.stderr[-3000:]}")
    return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", default="pydoc", help="calibration corpus or file (128 x 512 tokens, seed 0)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one = run(args, Path(tmp) / "one.pt", 1)
        many = run(args, Path(tmp) / "many.pt", args.processes)
    equal = sum(int((many["codes"][n] == c).sum()) for n, c in one["codes"].items())
    total = sum(c.numel() for c in one["codes"].values())
    for result in (one, many):
        rows.append({"processes": result["processes"], "s / block": result["seconds"] / result["blocks"],
                     "time vs 1 process": result["seconds"] / one["seconds"],
                     "codes equal to 1 process": equal / total if result is many else 1.0})
    print(f"\n{METHOD} on default, calibration {args.calib} {CALIB_SAMPLES} x {CALIB_SEQLEN}")
    show(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parallel.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
