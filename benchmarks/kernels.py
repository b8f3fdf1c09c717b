"""Kernel benchmark: QuantLinear's CPU routes against fp32 `F.linear`, per shape and token count.

For the default model's linear shapes (576 -> 576, 576 -> 192, 576 -> 1536, 1536 -> 576 and the
576 -> 49152 head) at 4 and 8 bits, group 64: microseconds per call of fp32, the int8-activation
GEMV, the float GEMV, and decode-then-BLAS, at 1 to 32 tokens. The weights are touched once
before timing, as a model's would be in cache after the first token only if they fit: so the
fp32 figures here are optimistic for large matrices. Prints a table and writes JSON.

    python benchmarks/kernels.py [--tokens 1,2,4,8,16,32] [--out benchmarks/results/kernels.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tcompress as tc
from tcompress import kernels
from tcompress.packed.grid import Grid, quantize_weight
from tcompress.packed.quant_linear import QuantLinear

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]


def timed(fn, budget: float = 0.2) -> float:
    """Median microseconds per call over about `budget` seconds."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    times = []
    for _ in range(max(3, min(200, int(budget / once)))):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1,2,4,8,16,32")
    parser.add_argument("--bits", default="4,8")
    parser.add_argument("--out", default="benchmarks/results/kernels.json")
    args = parser.parse_args()
    if not kernels.available():
        raise SystemExit("the C kernels are not available here (no compiler, or TCOMPRESS_KERNELS=0)")
    torch.manual_seed(0)
    rows = []
    for in_features, out_features in SHAPES:
        weight = torch.randn(out_features, in_features) * 0.05
        for bits in (int(b) for b in args.bits.split(",")):
            grid = Grid(bits, 64)
            module = QuantLinear.from_codes(*quantize_weight(weight, grid), grid, None, torch.float32)
            packed = (module.qweight, module.scales, module.zeros)
            for tokens in (int(t) for t in args.tokens.split(",")):
                x = torch.randn(tokens, in_features)
                row = {"shape": f"{in_features}->{out_features}", "bits": bits, "tokens": tokens,
                       "fp32 us": timed(lambda: F.linear(x, weight))}
                if tokens <= 32:
                    row["gemv int8 us"] = timed(lambda: kernels.qgemm(x, *packed, bits, 64, None, "int8"))
                    row["gemv float us"] = timed(lambda: kernels.qgemm(x, *packed, bits, 64, None, "float"))

                def decoded_blas():
                    decoded, order = kernels.decoded_weight(*packed, in_features, bits, 64)
                    return F.linear(x if order is None else x.index_select(1, order), decoded)

                row["decode+BLAS us"] = timed(decoded_blas)
                fastest = min(v for k, v in row.items() if k.endswith(" us") and k != "fp32 us")
                row["best vs fp32"] = row["fp32 us"] / fastest
                rows.append(row)
                print(tc.report.format_table([{k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}]),
                      flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    print(tc.report.format_table([{k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
                                  for row in rows]))
    print(f"\n{torch.get_num_threads()} threads; wrote {out}")


if __name__ == "__main__":
    main()
