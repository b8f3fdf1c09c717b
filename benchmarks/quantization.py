"""Weight quantization on the default model (and MiniLM), one run, one table.

    python benchmarks/quantization.py [--data ../shared/data] [--calib pydoc] [--configs rtn gptq:bits=3]

For each config (a method in its text form, `gptq:bits=3,group_size=channel`: the fields that
differ from the method's defaults; stages joined by `;`; `smoothquant` is W8A8,
`smoothquant:activations=false` W8): WikiText-2 perplexity (the protocol of `common.py`), compression wall time, peak RSS,
bytes of the quantized linears and of the whole model on disk. MiniLM rows give the STS-B
Spearman and 1 - the mean cosine between the quantized and the float model's embeddings of
the STS-B dev sentences (calibration 128 x 128 tokens).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from common import Protocol, add_protocol_options, describe, show, stages

import tcompress as tc
from tcompress.checkpoint import disk_bytes
from tcompress.core.memory import PeakMemory
from tcompress.eval.embeddings import embed, embedding_cosine, read_stsb

DEFAULT_CONFIGS = ["rtn:group_size=channel", "gptq:group_size=channel", "awq:group_size=channel", "rtn", "gptq",
                   "awq", "hqq", "rtn:bits=3", "gptq:bits=3", "awq:bits=3", "rtn:bits=2", "gptq:bits=2", "awq:bits=2",
                   "smoothquant:activations=false", "smoothquant"]
MINILM_CONFIGS = ["rtn:group_size=channel", "gptq:group_size=channel", "awq:group_size=channel", "rtn", "gptq", "awq",
                  "rtn:bits=3", "gptq:bits=3", "awq:bits=3", "smoothquant:activations=false", "smoothquant"]


def quantized_megabytes(model) -> float:
    return sum(m.nbytes() for m in tc.packed.packed_modules(model).values()) / 2**20


def run(model, config: list[tc.Method], calib, measure, extra: dict | None = None) -> dict:
    """Quantize a copy of `model` with the stages of `config`; `extra` maps further column
    names to functions of the quantized model."""
    quantized = copy.deepcopy(model)
    with PeakMemory(next(model.parameters()).device) as memory:
        start = time.perf_counter()
        for method in config:
            tc.apply(quantized, method, calib if method.needs_data else None)
        seconds = time.perf_counter() - start
    row = {"setting": describe(config), "quality": measure(quantized), "seconds": seconds,
           "peak_rss_mb": memory.peak / 2**20, "linears_mb": quantized_megabytes(quantized),
           "disk_mb": disk_bytes(quantized) / 2**20}
    row.update({column: function(quantized) for column, function in (extra or {}).items()})
    show([row])
    return row


def llm_table(args, configs: list[list[tc.Method]]) -> list[dict]:
    protocol = Protocol(args)
    rows = [float_row(protocol.model, protocol.perplexity)] if args.baseline else []
    return rows + [run(protocol.model, method, protocol.calib, protocol.perplexity) for method in configs]


def float_row(model, measure, extra: dict | None = None) -> dict:
    row = {"setting": "fp32", "quality": measure(model), "seconds": 0.0, "peak_rss_mb": None, "linears_mb": None,
           "disk_mb": disk_bytes(model) / 2**20}
    row.update({column: function(model) for column, function in (extra or {}).items()})
    show([row])
    return row


def minilm_table(args, configs: list[list[tc.Method]]) -> list[dict]:
    model, tok = tc.load("minilm")
    calib = tc.data.calibration(args.calib, tok, n=128, seqlen=128, seed=0)
    stsb = Path(args.data) / "glue" / "stsb" / "dev.tsv"
    measure = lambda m: tc.eval.stsb_spearman(m, tok, stsb)  # noqa: E731
    first, second, _ = read_stsb(stsb)
    sentences = first + second
    reference = embed(model, tok, sentences)  # once: every row compares with it
    # fidelity to the float model, finer than the Spearman when a method barely moves it
    drift = {"1 - cosine to fp32": lambda m: 1 - embedding_cosine(reference, m, tok, sentences)}
    rows = [float_row(model, measure, drift)] if args.baseline else []
    return rows + [run(model, method, calib, measure, drift) for method in configs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_options(parser)
    parser.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, help="none to skip the default model")
    parser.add_argument("--minilm-configs", nargs="*", default=MINILM_CONFIGS, help="none to skip MiniLM")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the float models too (default yes)")
    args = parser.parse_args()
    configs, minilm_configs = stages(filter(None, args.configs)), stages(filter(None, args.minilm_configs))
    results = {"llm": llm_table(args, configs) if configs else [],
               "minilm": minilm_table(args, minilm_configs) if minilm_configs else []}
    tc.report.write_json(Path(args.out) / "quantization.json", results)
    if results["llm"]:
        print(f"\n{Protocol(args).describe()}")
        print(tc.report.format_table(results["llm"]))
    if results["minilm"]:
        print("\nminilm: STS-B dev Spearman")
        print(tc.report.format_table(results["minilm"]))


if __name__ == "__main__":
    main()
