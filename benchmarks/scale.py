"""Models larger than the run's memory: GPTQ W4 g64 streamed block by block from the files.

    python benchmarks/scale.py [--calib c4-file] [--samples 8] [--skip-default] [--skip-large]

Two subjects, each run in a fresh process (the kernel's high-water mark of resident memory,
`ru_maxrss`, is one a process: the figure `/usr/bin/time -v` prints):

- the default model, in memory and streamed (`tc.load(lazy=True)`), 128 x 512 calibration
  tokens: peak RSS against the prediction, time per block, and whether the two saved the
  same tensors bit for bit;
- a random-weight Llama with SmolLM2-1.7B's shape (24 blocks, hidden 2048, FFN 8192, 32
  heads, 1.71B parameters: 6.8 GB in fp32) written here as sharded safetensors, quantized
  streaming on `--samples` x 512 tokens of the calibration text (the default model's
  tokenizer: the same vocabulary): peak RSS against the prediction, time per block, output
  size; the output is loaded with `tc.load` and, exported dequantized, with plain transformers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from common import CALIB_SEED, CALIB_SEQLEN, show
from safetensors.torch import load_file, save_file

import tcompress as tc
from tcompress.core.sizes import folder_bytes
from tcompress.engine.peak import peak_rss, predict_peak
from tcompress.models.loading import read_processor

METHOD = "gptq:bits=4,group_size=64"
LARGE = dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192, rope_theta=130000.0,
             tie_word_embeddings=True, architectures=["LlamaForCausalLM"])


def write_random_llama(folder: Path, seed: int = 0) -> None:
    """A random Llama of the `LARGE` shape, written a block at a time (never whole in memory)."""
    config = transformers.LlamaConfig(**LARGE)
    with torch.device("meta"):
        empty = transformers.LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in empty.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings
        shard = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        shards.setdefault(shard, {})[name] = param
    weight_map, names = {}, list(shards)
    for i, shard in enumerate(names, 1):
        file = f"model-{i:05d}-of-{len(names):05d}.safetensors"
        state = {name: (torch.ones(p.shape) if name.endswith("norm.weight")
                        else torch.randn(p.shape, generator=generator) * config.initializer_range)
                 for name, p in shards[shard].items()}
        save_file(state, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(folder)


def child(args: argparse.Namespace) -> None:
    """One run: load (streamed or not), quantize, save; prints its figures as a JSON line."""
    tokenizer = read_processor(tc.checkpoint.local_folder("default"))  # the tokenizer alone, not a second model
    model, _ = tc.load(args.source, lazy=args.lazy, processor=False)
    calib = tc.data.calibration(args.calib, tokenizer, n=args.samples, seqlen=CALIB_SEQLEN, seed=CALIB_SEED)
    method = tc.engine.parse_method(METHOD)
    predicted = predict_peak(model, method, args.samples, CALIB_SEQLEN, lazy=args.lazy)
    start = time.perf_counter()
    tc.apply(model, method, calib, progress=False)
    seconds = time.perf_counter() - start
    tc.save(model, args.child, tokenizer)
    blocks = model.config.num_hidden_layers
    print(json.dumps({"seconds": seconds, "per_block": seconds / blocks, "peak": peak_rss(),
                      "predicted": predicted.total, "parts": predicted.text(), "out_bytes": folder_bytes(args.child)}))


def run(args: argparse.Namespace, source: str, out: Path, lazy: bool, samples: int) -> dict:
    command = [sys.executable, __file__, "--child", str(out), "--source", source, "--calib", args.calib,
               "--samples", str(samples)] + (["--lazy"] if lazy else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def row(subject: str, lazy: bool, samples: int, result: dict) -> dict:
    return {"subject": subject, "run": "streamed" if lazy else "in memory", "calib tokens": samples * CALIB_SEQLEN,
            "peak RSS GB": result["peak"] / 1e9, "predicted GB": result["predicted"] / 1e9,
            "predicted / measured": result["predicted"] / result["peak"], "s / block": result["per_block"],
            "output MB": result["out_bytes"] / 2**20}


def same_tensors(a: Path, b: Path) -> bool:
    def tensors(folder: Path) -> dict:
        state = {}
        for file in folder.glob("*.safetensors"):
            state.update(load_file(file))
        return state

    first, second = tensors(a), tensors(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def loads_everywhere(folder: Path, work: Path) -> dict:
    """The output loads with tc.load, and exported dequantized, in plain transformers: the same logits."""
    model, tokenizer = tc.load(folder)
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog").input_ids])
    packed = model(ids).logits
    tc.export.export_hf(model, tokenizer, work / "plain")
    del model
    plain = transformers.AutoModelForCausalLM.from_pretrained(work / "plain")(ids).logits
    return {"tc.load": bool(torch.isfinite(packed).all()),
            "plain transformers max |diff|": float((plain - packed).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", default="pydoc", help="calibration corpus or file (x 512 tokens, seed 0)")
    parser.add_argument("--samples", type=int, default=8, help="calibration samples for the large subject")
    parser.add_argument("--skip-default", action="store_true", help="only the large subject")
    parser.add_argument("--skip-large", action="store_true", help="only the default model")
    parser.add_argument("--work", help="folder for the large model and the outputs (default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--lazy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows, notes = [], {}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        if not args.skip_default:
            source = str(tc.checkpoint.local_folder("default"))
            for lazy in (False, True):
                rows.append(row("default", lazy, 128, run(args, source, work / f"default-{lazy}", lazy, 128)))
                show(rows[-1:])
            notes["default: streamed and in-memory tensors identical"] = same_tensors(work / "default-False",
                                                                                     work / "default-True")
        if not args.skip_large:
            start = time.perf_counter()
            write_random_llama(work / "large")
            notes["large: written GB"] = folder_bytes(work / "large") / 1e9
            notes["large: write seconds"] = time.perf_counter() - start
            rows.append(row("1.7B-shape random", True, args.samples,
                            run(args, str(work / "large"), work / "large-w4", True, args.samples)))
            show(rows[-1:])
            (work / "large").rename(work / "large-deleted")  # the source is no longer needed: free the disk
            subprocess.run(["rm", "-rf", str(work / "large-deleted")], check=True)
            notes.update({f"large: {k}": v for k, v in loads_everywhere(work / "large-w4", work).items()})
    print(f"\n{METHOD}, calibration {args.calib}")
    show(rows)
    for key, value in notes.items():
        print(f"{key}: {value}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=2))


if __name__ == "__main__":
    main()
