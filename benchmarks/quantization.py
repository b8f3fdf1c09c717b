"""Weight quantization on the default model (and MiniLM), one run, one table.

    python benchmarks/quantization.py [--data ../shared/data] [--calib pydoc] [--configs rtn:4:64,gptq:3:64]

For each config (method:bits:group[:search][:field=value], group `c` = per-channel, search
minmax, mse or hqq; `smoothquant` is W8A8, `smoothquant:weight-only` W8): WikiText-2 perplexity (first 16 windows of 2048 tokens), compression
wall time, peak RSS, bytes of the quantized linears and of the whole model on disk.
Calibration: 128 x 512 tokens of `--calib`, seed 0. MiniLM rows give the STS-B Spearman
and 1 - the mean cosine between the quantized and the float model's embeddings of the STS-B
dev sentences.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import yaml

import tcompress as tc
from tcompress.eval.embeddings import embed, embedding_cosine, read_stsb
from tcompress.eval.latency import PeakMemory
from tcompress.export.packed import PACKED_MODULES

DEFAULT_CONFIGS = ("rtn:4:c,gptq:4:c,awq:4:c,rtn:4:64,gptq:4:64,awq:4:64,hqq:4:64,rtn:3:64,gptq:3:64,awq:3:64,"
                   "rtn:2:64,gptq:2:64,awq:2:64,smoothquant:weight-only,smoothquant")
MINILM_CONFIGS = ("rtn:4:c,gptq:4:c,awq:4:c,rtn:4:64,gptq:4:64,awq:4:64,rtn:3:64,gptq:3:64,awq:3:64,"
                  "smoothquant:weight-only,smoothquant")


def parse_config(text: str) -> dict:
    """`method:bits:group[:search][:field=value...]`, e.g. `gptq:3:64:mse:damp=0.1`;
    `smoothquant[:alpha=0.5]` and `smoothquant:weight-only` for the W8A8 / W8 rows."""
    method, *parts = text.split(":")
    config: dict = {"method": method}
    if method != "smoothquant":
        bits, group, *parts = parts
        config.update(bits=int(bits), group_size=None if group == "c" else int(group))
    for part in parts:
        if part == "weight-only":
            config["activations"] = False
        elif "=" in part:
            key, value = part.split("=", 1)
            config[key] = yaml.safe_load(value)
        else:
            config["search"] = part
    return config


def label(config: dict) -> str:
    if config["method"] == "smoothquant":
        text = "smoothquant " + ("W8" if config.get("activations") is False else "W8A8")
    else:
        group = "channel" if config["group_size"] is None else f"g{config['group_size']}"
        text = f"{config['method']} W{config['bits']} {group}"
    extras = [config.get("search", "")] + [f"{k}={v}" for k, v in config.items()
                                           if k not in ("method", "bits", "group_size", "search", "activations")]
    return " ".join([text] + [e for e in extras if e])


def disk_megabytes(model) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        tc.save(model, Path(tmp) / "m")
        return sum(f.stat().st_size for f in (Path(tmp) / "m").glob("*.safetensors")) / 2**20


def quantized_megabytes(model) -> float:
    packed = tuple(PACKED_MODULES.values())
    return sum(m.nbytes() for m in model.modules() if isinstance(m, packed)) / 2**20


def run(model, config: dict, calib, measure, extra: dict | None = None) -> dict:
    """Quantize a copy of `model` with `config`; `extra` maps further column names to
    functions of the quantized model."""
    quantized = copy.deepcopy(model)
    method = tc.methods.method_from(config)
    with PeakMemory(next(model.parameters()).device) as memory:
        start = time.perf_counter()
        tc.apply(quantized, method, calib if method.needs_data else None)
        seconds = time.perf_counter() - start
    row = {"setting": label(config), "quality": measure(quantized), "seconds": seconds,
           "peak_rss_mb": memory.peak / 2**20, "linears_mb": quantized_megabytes(quantized),
           "disk_mb": disk_megabytes(quantized)}
    row.update({column: function(quantized) for column, function in (extra or {}).items()})
    print(tc.report.format_table([row]), flush=True)
    return row


def llm_table(args) -> list[dict]:
    model, tok = tc.load(args.model)
    calib = tc.data.calibration(args.calib, tok, n=128, seqlen=512, seed=0)
    windows = tc.data.windows(Path(args.data) / "wikitext2" / "wiki.test.raw", tok, seqlen=2048, limit=args.windows)
    measure = lambda m: tc.eval.perplexity(m, tok, windows, seqlen=2048, progress=False)  # noqa: E731
    rows = [float_row(model, measure)] if args.baseline else []
    return rows + [run(model, parse_config(c), calib, measure) for c in args.configs.split(",") if c]


def float_row(model, measure, extra: dict | None = None) -> dict:
    row = {"setting": "fp32", "quality": measure(model), "seconds": 0.0, "peak_rss_mb": None, "linears_mb": None,
           "disk_mb": disk_megabytes(model)}
    row.update({column: function(model) for column, function in (extra or {}).items()})
    print(tc.report.format_table([row]), flush=True)
    return row


def minilm_table(args) -> list[dict]:
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
    return rows + [run(model, parse_config(c), calib, measure, drift) for c in args.minilm_configs.split(",") if c]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--calib", default="pydoc")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="empty to skip the default model")
    parser.add_argument("--minilm-configs", default=MINILM_CONFIGS, help="empty to skip MiniLM")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the float models too (default yes)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    results = {"llm": llm_table(args) if args.configs else [],
               "minilm": minilm_table(args) if args.minilm_configs else []}
    tc.report.write_json(Path(args.out) / "quantization.json", results)
    if results["llm"]:
        print(f"\n{args.model}: WikiText-2 perplexity ({args.windows} x 2048), calibration {args.calib} 128 x 512")
        print(tc.report.format_table(results["llm"]))
    if results["minilm"]:
        print("\nminilm: STS-B dev Spearman")
        print(tc.report.format_table(results["minilm"]))


if __name__ == "__main__":
    main()
