"""Pruning on the default model, one run, one table.

    python benchmarks/pruning.py [--data ../shared/data] [--configs sparsegpt:0.5,wanda:2:4]

For each config (`method:sparsity`, `method:N:M` or `structured:share_kept`, then optional
`field=value` parts, e.g. `sparsegpt:2:4:bits=4`, `structured:0.75:parts=heads+channels+blocks`): WikiText-2 perplexity (first 16 windows of 2048 tokens), wall time
of the pruning, nonzero parameters, bytes on disk, and prefill latency at batch 1 and 8
(128 tokens) relative to the dense model measured in the same run. Calibration: 128 x 512
tokens of `--calib`, seed 0.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import yaml

import tcompress as tc
from tcompress.eval.latency import disk_bytes
from tcompress.prune import SparseLinear
from tcompress.quantize import QuantLinear

DEFAULT_CONFIGS = ("magnitude:0.5,wanda:0.5,sparsegpt:0.5,magnitude:2:4,wanda:2:4,sparsegpt:2:4,"
                   "structured:0.9,structured:0.9:parts=blocks,structured:0.9:parts=heads+channels+blocks,"
                   "structured:0.75,structured:0.75:parts=blocks,structured:0.75:parts=heads+channels+blocks")


def parse_config(text: str) -> dict:
    method, *parts = text.split(":")
    config: dict = {"method": method}
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        config["pattern"] = f"{parts[0]}:{parts[1]}"
        parts = parts[2:]
    elif parts and "=" not in parts[0]:
        config["target_params" if method == "structured" else "sparsity"] = float(parts.pop(0))
    for part in parts:
        key, value = part.split("=", 1)
        config[key] = value.split("+") if key == "parts" else yaml.safe_load(value)
    return config


def label(config: dict) -> str:
    if config["method"] == "structured":
        amount = f"{config['target_params']:.0%} params, " + "+".join(config.get("parts", ["heads", "channels"]))
    else:
        amount = config.get("pattern") or f"{config.get('sparsity', 0.5):.0%}"
    extras = [f"{k}={v}" for k, v in config.items() if k not in ("method", "pattern", "sparsity", "target_params", "parts")]
    return " ".join([config["method"], amount, *extras])


def nonzero_parameters(model) -> int:
    """Parameters still stored: kept values of sparse linears, every weight of the others."""
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    for module in model.modules():
        if isinstance(module, SparseLinear):  # a dense weight in memory: count what is kept
            total += int(module.kept().sum()) - module.weight.numel()
        elif isinstance(module, QuantLinear):
            total += int(module.dequantize().ne(0).sum())
    return total


def prefill_seconds(model, batch: int, seqlen: int = 128, repeats: int = 5) -> float:
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        model(input_ids=ids, logits_to_keep=1)
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, name: str, seconds: float, perplexity) -> dict:
    row = {"setting": name, "wt2 ppl": perplexity(model) if perplexity else None, "seconds": seconds,
           "parameters (M)": nonzero_parameters(model) / 1e6, "disk MB": disk_bytes(model) / 2**20}
    for batch in (1, 8):
        row[f"prefill b{batch} s"] = prefill_seconds(model, batch)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--calib", default="pydoc")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the dense model's perplexity too (its latency always is)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    model, tok = tc.load(args.model)
    calib = tc.data.calibration(args.calib, tok, n=128, seqlen=512, seed=0)
    windows = tc.data.windows(Path(args.data) / "wikitext2" / "wiki.test.raw", tok, seqlen=2048, limit=args.windows)
    perplexity = lambda m: tc.eval.perplexity(m, tok, windows, seqlen=2048, progress=False)  # noqa: E731
    rows = [measure(model, "dense", 0.0, perplexity if args.baseline else None)]
    print(tc.report.format_table(rows), flush=True)
    for text in filter(None, args.configs.split(",")):
        config = parse_config(text)
        pruned = copy.deepcopy(model)
        start = time.perf_counter()
        tc.apply(pruned, config, calib)
        rows.append(measure(pruned, label(config), time.perf_counter() - start, perplexity))
        print(tc.report.format_table(rows[-1:]), flush=True)
        del pruned
    for row in rows:
        for batch in (1, 8):
            row[f"prefill b{batch} vs dense"] = rows[0][f"prefill b{batch} s"] / row[f"prefill b{batch} s"]
    tc.report.write_json(Path(args.out) / "pruning.json", rows)
    print(f"\n{args.model}: WikiText-2 perplexity ({args.windows} x 2048), calibration {args.calib} 128 x 512")
    print(tc.report.format_table(rows))


if __name__ == "__main__":
    main()
