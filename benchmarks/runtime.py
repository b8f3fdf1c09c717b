"""Runtime benchmark: how fast fp32, W8 and W4 versions of a model decode and prefill on this
machine, through transformers' own forward and through tcompress's decoder, and how much
memory each takes. One table (printed, and JSON), one latency-vs-batch PNG.

Each model is measured in a fresh process, so its peak RSS is its own. W8 and W4 are
round-to-nearest, group 64, with an 8-bit output head and 8-bit embeddings read from the head's
codes (the model's embeddings are tied); speed does not depend on how the codes were chosen
(pass --w4 DIR to measure a saved GPTQ/AWQ model instead). Beside the figures: the
memory-bandwidth bound, bytes read per token / measured read bandwidth.

Engines: "hf" is transformers' `generate`; "tcompress" is `tcompress.runtime.Decoder` on the
model `tc.load` gives; "lean" is the same decoder on `load_for_decoding`'s modules, in a process
that never imports transformers' model code (about 120 MB of Python modules).

The llama.cpp rows (where `llama-cpp-python` is installed) run the same model through
llama.cpp: an F32 GGUF written by tcompress's exporter, and Q8_0 / Q4_0 made from it by
llama.cpp's own quantizer (`llama_model_quantize`), with as many threads as torch uses.

    python benchmarks/runtime.py                      # default model, all rows
    python benchmarks/runtime.py --rows w4:tcompress  # one row
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import tcompress as tc
from tcompress.core.memory import PeakMemory
from tcompress.eval.harness import BenchReport, BenchRow
from tcompress.export.verify import llama_cpp_available

ROWS = ("fp32:hf", "fp32:tcompress", "w8:hf", "w8:tcompress", "w8:lean", "w4:hf", "w4:tcompress", "w4:lean",
        "f32:llama.cpp", "q8_0:llama.cpp", "q4_0:llama.cpp")
DECODER_ENGINES = ("tcompress", "lean")
LLAMA_CPP_TYPES = {"f32": 0, "q8_0": 7, "q4_0": 2}  # llama_ftype: ALL_F32, MOSTLY_Q8_0, MOSTLY_Q4_0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--rows", default=",".join(ROWS), help="variant:engine pairs (variants fp32, w8, w4)")
    parser.add_argument("--w4", help="a saved 4-bit model to measure as w4 (default: RTN W4 g64 made here)")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--out", default="benchmarks/results/runtime")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(measure(args, *args.worker)), flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = args.rows.split(",")
    if any(row.endswith(":llama.cpp") for row in rows) and not llama_cpp_available():
        print("llama-cpp-python is not installed: no llama.cpp rows", flush=True)
        rows = [row for row in rows if not row.endswith(":llama.cpp")]
    paths = prepare(args, out / "models", {row.split(":")[0] for row in rows})
    bandwidth = read_bandwidth()
    results = []
    for row in rows:
        variant, engine = row.split(":")
        print(f"measuring {row} ...", flush=True)
        result = run_worker(paths[variant], engine, args)
        result.update(row=row, bound_tok_s=bandwidth / result["bytes_per_token"])
        results.append(result)
        print(table([result]), flush=True)
    (out / "runtime.json").write_text(json.dumps({"bandwidth_gb_s": bandwidth / 1e9, "rows": results}, indent=2))
    report = BenchReport(tc.BenchSettings(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(","))))
    report.rows = [BenchRow(**r) for result in results for r in result["bench"] if r["phase"] == "decode"]
    report.plot(out / "runtime.png")
    print(f"\n{args.model}: decode {args.new_tokens} tokens after {args.prompt} (batch 1), prefill {args.prefill} "
          f"tokens; {torch.get_num_threads()} threads; read bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(table(results))
    print(f"\nwrote {out / 'runtime.json'} and {out / 'runtime.png'}")


def prepare(args, folder: Path, variants: set[str]) -> dict[str, str]:
    """The fp32 model spec, saved W8 / W4 models and GGUF files (made once, reused)."""
    name = name_of(args.model)
    paths = {"fp32": args.model, "w8": str(folder / f"{name}-w8-g64"), "w4": args.w4 or str(folder / f"{name}-w4-g64"),
             **{qtype: str(folder / f"{name}-{qtype}.gguf") for qtype in LLAMA_CPP_TYPES}}
    for variant, bits in (("w8", 8), ("w4", 4)):
        if Path(paths[variant]).exists() or variant not in variants:
            continue
        model, tok = tc.load(args.model)
        tc.apply(model, tc.quantize.RTN(bits=bits, group_size=64))
        tc.apply(model, tc.quantize.RTN(bits=8, group_size=64, head=True, include=("lm_head",)))
        tc.apply(model, tc.quantize.EmbeddingQuant(bits=8, group_size=64))
        tc.save(model, paths[variant], tok)
    if variants & set(LLAMA_CPP_TYPES) and not Path(paths["f32"]).exists():
        from tcompress.export.gguf import export_gguf

        model, tok = tc.load(args.model)
        export_gguf(model, tok, paths["f32"], "f32", embeddings="f32")
    for qtype in variants & (set(LLAMA_CPP_TYPES) - {"f32"}):
        if not Path(paths[qtype]).exists():
            llama_quantize(paths["f32"], paths[qtype], LLAMA_CPP_TYPES[qtype])
    return paths


def llama_quantize(source: str, target: str, ftype: int) -> None:
    """llama.cpp's own quantizer, through its C API."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = torch.get_num_threads()
    if llama_cpp.llama_model_quantize(source.encode(), target.encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to type {ftype}")


def run_worker(model: str, engine: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", model, engine, "--prompt", str(args.prompt), "--new-tokens",
               str(args.new_tokens), "--prefill", str(args.prefill), "--batch-sizes", args.batch_sizes]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {model} {engine} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def measure(args, spec: str, engine: str) -> dict:
    """In a fresh process: load, decode at batch 1, prefill, sweep batch sizes, peak RSS."""
    import psutil

    if engine == "llama.cpp":
        return measure_llama_cpp(args, spec)
    baseline = psutil.Process().memory_info().rss
    if engine == "lean":
        from tcompress.runtime.lean import load_for_decoding

        model = load_for_decoding(spec)
    else:
        model, _ = tc.load(spec, processor=False)  # token ids in, logits out: no tokenizer in memory
    model.eval()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=generator)
    long_prompt = torch.randint(0, model.config.vocab_size, (1, args.prefill), generator=generator)
    generate = generator_for(model, engine, args.prompt + args.new_tokens + 1)
    with PeakMemory(torch.device("cpu")) as memory:
        generate(prompt, 2)  # warm-up
        one = min(timed(lambda: generate(prompt, 1)) for _ in range(3))
        full = min(timed(lambda: generate(prompt, args.new_tokens)) for _ in range(2))
    prefill_once = prefiller(model, engine, args.prefill)
    prefill = min(timed(lambda: prefill_once(long_prompt)) for _ in range(2))
    settings = tc.BenchSettings(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), seqlen=args.prompt,
                                new_tokens=16, repeats=3, engine="tcompress" if engine == "lean" else engine)
    report = tc.bench({f"{name_of(spec)} ({engine})": model}, settings, disk=False, progress=False)
    return {"decode_tok_s": (args.new_tokens - 1) / (full - one), "prefill_tok_s": args.prefill / prefill,
            "peak_rss_mb": memory.peak / 2**20, "model_rss_mb": (memory.peak - baseline) / 2**20,
            "bytes_per_token": bytes_read_per_token(model), "bench": [r.__dict__ for r in report.rows]}


def measure_llama_cpp(args, path: str) -> dict:
    """The same measurements through llama.cpp (batch 1 only): the same prompts, greedy decoding."""
    import llama_cpp
    import psutil

    baseline = psutil.Process().memory_info().rss
    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(model_path=path, n_ctx=max(args.prefill, args.prompt + args.new_tokens) + 8,
                          n_batch=args.prefill, n_threads=threads, n_threads_batch=threads, verbose=False)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, llm.n_vocab(), (args.prompt,), generator=generator).tolist()
    long_prompt = torch.randint(0, llm.n_vocab(), (args.prefill,), generator=generator).tolist()

    def generate(tokens: list[int], new_tokens: int) -> list[int]:
        llm.reset()
        out = []
        for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            out.append(token)
            if len(out) == new_tokens:
                return out
        return out

    def prefill(tokens: list[int]) -> None:
        llm.reset()
        llm.eval(tokens)

    with PeakMemory(torch.device("cpu")) as memory:
        generate(prompt, 2)  # warm-up
        one = min(timed(lambda: generate(prompt, 1)) for _ in range(3))
        full = min(timed(lambda: generate(prompt, args.new_tokens)) for _ in range(2))
        prefill_seconds = min(timed(lambda: prefill(long_prompt)) for _ in range(2))
    decode = (args.new_tokens - 1) / (full - one)
    point = {"model": f"{Path(path).stem} (llama.cpp)", "phase": "decode", "batch": 1, "seqlen": args.prompt,
             "latency_ms": 1000 / decode, "throughput": decode, "memory_mb": memory.peak / 2**20}
    return {"decode_tok_s": decode, "prefill_tok_s": args.prefill / prefill_seconds,
            "peak_rss_mb": memory.peak / 2**20, "model_rss_mb": (memory.peak - baseline) / 2**20,
            "bytes_per_token": Path(path).stat().st_size, "bench": [point]}  # batch 1 only: a point on the plot


def generator_for(model, engine: str, max_length: int):
    """`generate(prompt, new_tokens)`, greedy, through the chosen engine."""
    if engine in DECODER_ENGINES:
        from tcompress.runtime import Decoder

        decoder = Decoder(model, max_length=max_length)
        return decoder.generate

    def generate(prompt, new_tokens):
        with torch.inference_mode():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    return generate


def prefiller(model, engine: str, length: int):
    """`prefill(prompt)` through the chosen engine (its decoder built here, outside the timing)."""
    if engine in DECODER_ENGINES:
        from tcompress.runtime import Decoder

        return Decoder(model, max_length=length, batch_size=1).prefill

    def prefill(prompt) -> None:
        with torch.inference_mode():
            model(input_ids=prompt, logits_to_keep=1)

    return prefill


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bytes_read_per_token(model) -> int:
    """Weight bytes a decode step reads: every tensor but the input embedding table (one row of
    it), which counts only where the output head shares it."""
    def tensors(module) -> list:
        return [*module.parameters(), *module.buffers()] if module is not None else []

    skip = {id(t) for t in tensors(model.get_input_embeddings())}
    keep = {id(t) for t in tensors(model.get_output_embeddings())}
    read = {t.data_ptr(): t for t in tensors(model) if id(t) not in skip or id(t) in keep}
    return sum(t.numel() * t.element_size() for t in read.values())


def read_bandwidth() -> float:
    """Bytes per second this machine reads from memory (sum over 1 GiB, best of 5)."""
    data = torch.ones(2**28)
    data.sum()
    return data.numel() * 4 / min(timed(data.sum) for _ in range(5))


def name_of(spec: str) -> str:
    return Path(spec).name


def table(results: list[dict]) -> str:
    rows = []
    for r in results:
        decode = {b["batch"]: b["throughput"] for b in r["bench"] if b["phase"] == "decode"}
        rows.append({"row": r.get("row", ""), "decode tok/s (b1)": round(r["decode_tok_s"], 1),
                     "bound tok/s": round(r.get("bound_tok_s", float("nan")), 1),
                     "prefill tok/s": round(r["prefill_tok_s"], 1),
                     **{f"b{b} tok/s": round(v, 1) for b, v in decode.items()},
                     "MB read/token": round(r["bytes_per_token"] / 1e6, 1), "peak RSS MB": round(r["peak_rss_mb"]),
                     "model RSS MB": round(r["model_rss_mb"])})
    return tc.report.format_table(rows)


if __name__ == "__main__":
    main()
