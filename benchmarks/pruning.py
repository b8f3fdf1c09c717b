"""Pruning on the default model, one run, one table.

    python benchmarks/pruning.py [--data ../shared/data] [--configs sparsegpt wanda:pattern=2:4]

For each config (a method in its text form, e.g. `sparsegpt:pattern=2:4,bits=4`,
`structured:target_params=0.75,parts=heads+channels+blocks`): WikiText-2 perplexity (the
protocol of `common.py`), wall time of the pruning, nonzero parameters, bytes on disk, and
prefill latency at batch 1 and 8 (128 tokens) relative to the dense model measured in the
same run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from common import Protocol, add_protocol_options, methods, show

import tcompress as tc
from tcompress.checkpoint import disk_bytes
from tcompress.core.sizes import parameter_count
from tcompress.packed import QuantLinear, SparseLinear

DEFAULT_CONFIGS = ["magnitude", "wanda", "sparsegpt", "magnitude:pattern=2:4", "wanda:pattern=2:4",
                   "sparsegpt:pattern=2:4", "structured:target_params=0.9", "structured:target_params=0.9,parts=blocks",
                   "structured:target_params=0.9,parts=heads+channels+blocks", "structured:target_params=0.75",
                   "structured:target_params=0.75,parts=blocks",
                   "structured:target_params=0.75,parts=heads+channels+blocks"]


def nonzero_parameters(model) -> int:
    """Parameters still stored: kept values of sparse linears, every weight of the others."""
    total = parameter_count(model)
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
    add_protocol_options(parser)
    parser.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the dense model's perplexity too (its latency always is)")
    args = parser.parse_args()
    configs = methods(args.configs)
    protocol = Protocol(args)
    model = protocol.model
    rows = [measure(model, "dense", 0.0, protocol.perplexity if args.baseline else None)]
    show(rows)
    for method in configs:
        pruned = copy.deepcopy(model)
        start = time.perf_counter()
        tc.apply(pruned, method, protocol.calib)
        rows.append(measure(pruned, method.describe(), time.perf_counter() - start, protocol.perplexity))
        show(rows[-1:])
        del pruned
    for row in rows:
        for batch in (1, 8):
            row[f"prefill b{batch} vs dense"] = rows[0][f"prefill b{batch} s"] / row[f"prefill b{batch} s"]
    tc.report.write_json(Path(args.out) / "pruning.json", rows)
    print(f"\n{protocol.describe()}")
    print(tc.report.format_table(rows))


if __name__ == "__main__":
    main()
