"""Vision transformers end to end on `vit-fmnist`, one run, one table, one latency plot.

    python benchmarks/vision.py [--model vit-fmnist] [--data fashion-mnist] [--limit N]

Rows: fp32; W8A8, W6A6, W4A4 with min-max uniform quantizers and with the ViT-specific ones
(`ViTQuant`; activations simulated, so these run slower than fp32, not faster); token
merging (ToMe) at several r; heads and MLP channels pruned to 75% of the block parameters
(`Structured`), before and after logit distillation from the fp32 model on the training
images. Columns: Fashion-MNIST test accuracy, images/s at batch 1, 16 and 64 (forward,
median of repeats, in one `tc.bench` run whose rounds time every model in turn), parameters
and bytes. Calibration: 128 training images. Writes `vision.json`, `vision_bench.json` and `vision_bench.png`.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import tcompress as tc
from tcompress.core.sizes import tensor_bytes
from tcompress.prune.tokens import merge_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit-fmnist")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--limit", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--r", default="2,4,6", help="ToMe: tokens merged per block, comma-separated")
    parser.add_argument("--distill-steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="tc.bench rounds: every model timed in turn")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, processor = tc.load(args.model)
    test = tc.data.images(args.data, processor, split="test", limit=args.limit)
    train = tc.data.images(args.data, processor, split="train")
    calib = train.pixel_values[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:128]]
    accuracy = lambda m: tc.eval.accuracy(m, test, batch_size=256, progress=False)  # noqa: E731
    rows, timed = [], {}

    def add(name: str, m, seconds: float = 0.0, bench: bool = False, **extra) -> None:
        rows.append({"model": name, "accuracy": accuracy(m), "params (M)": params(m),
                     "MB": tensor_bytes(m) / 2**20, "seconds": seconds, **extra})
        print(tc.report.format_table(rows[-1:]), flush=True)
        if bench:
            timed[name] = m

    add("fp32", model, bench=True)
    for bits in (8, 6, 4):
        for quantizers in ("minmax", "vit"):
            quantized = copy.deepcopy(model)
            start = time.perf_counter()
            tc.apply(quantized, tc.quantize.ViTQuant(bits=bits, act_bits=bits, quantizers=quantizers), calib,
                     progress=False)
            add(f"W{bits}A{bits} {quantizers}", quantized, time.perf_counter() - start, bench=bits == 8 and
                quantizers == "vit")
    for r in (int(x) for x in args.r.split(",")):
        add(f"ToMe r={r}", merge_tokens(copy.deepcopy(model), r), bench=True)

    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    tc.apply(pruned, tc.prune.Structured(target_params=0.75), calib, progress=False)
    add("pruned 75% (heads+channels)", pruned, time.perf_counter() - start, bench=True)
    config = tc.distill.TrainConfig(steps=args.distill_steps, batch_size=128, lr=5e-4, warmup_steps=30)
    history = tc.distill.distill(pruned, train.pixel_values, [tc.distill.LogitKD(temperature=2.0)], config,
                                 teacher=model, out=out / "vision-distill")
    add("pruned 75% + logit KD", pruned, history.seconds, bench=True, images_trained=history.samples)

    report = tc.bench(timed, tc.BenchSettings(batch_sizes=(1, 16, 64), repeats=args.repeats, warmup=2,
                                                    rounds=args.rounds), disk=False)
    for row in rows:
        for bench_row in (b for b in report.rows if b.model == row["model"]):
            row[f"img/s b{bench_row.batch}"] = bench_row.throughput
    for row in rows:
        for batch in (1, 16, 64):
            if f"img/s b{batch}" in row:
                row[f"b{batch} vs fp32"] = row[f"img/s b{batch}"] / rows[0][f"img/s b{batch}"]
    report.to_json(out / "vision_bench.json")
    report.plot(out / "vision_bench.png")
    tc.report.write_json(out / "vision.json", rows)
    print(f"\n{args.model} on {args.data} ({len(test)} test images)")
    print(tc.report.format_table(rows))


def params(model) -> float:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) / 1e6


if __name__ == "__main__":
    main()
