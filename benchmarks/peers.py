"""GPTQ and SparseGPT side by side with llm-compressor on the default model, one run.

    python benchmarks/peers.py --peer-python PATH [--methods gptq,sparsegpt] [--data ../shared/data]

`--peer-python` is the interpreter of an environment with llm-compressor, e.g. made by
`python -m venv peers && peers/bin/pip install torch==2.13.0 "llmcompressor==0.14.*"`
(a separate one: it pins its own transformers). For each method, llm-compressor's run and
then ours, one right after the other on the same calibration token ids (128 x 512 of
`--calib`, seed 0): wall time of the compression alone and ours as a share of the peer's
(this machine's speed drifts by 10% from hour to hour, so the ratio is the figure to
trust), and the WikiText-2 perplexity of both (first 16 windows of 2048 tokens), computed
by the same code here. Settings: GPTQ W4 g64 asymmetric, the LM head left in float;
SparseGPT 50% of every block linear, the LM head (tied to the embeddings) untouched.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from common import Protocol, add_protocol_options, show
from safetensors.torch import load_file, save_file

import tcompress as tc

METHODS = {  # ours, then the peer runner's arguments for the same setting
    "gptq": (tc.quantize.GPTQ(bits=4, group_size=64), ["--bits", "4", "--group-size", "64"]),
    "sparsegpt": (tc.prune.SparseGPT(sparsity=0.5), ["--sparsity", "0.5"]),
}
RUNNER = Path(__file__).with_name("peer_llmcompressor.py")


def peer_weights(python: str, model_dir: Path, calib_file: Path, method: str, work: Path) -> tuple[float, dict]:
    """llm-compressor's run in its own process: its wall time and the weights it changed."""
    out = work / f"{method}.safetensors"
    # -P: not the benchmarks folder on its path, whose kernels.py would shadow a package of that name
    command = [python, "-P", str(RUNNER), "--model", str(model_dir), "--calib", str(calib_file), "--method", method,
               *METHODS[method][1], "--out", str(out)]
    result = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["seconds"], load_file(out)


def with_weights(model: torch.nn.Module, weights: dict) -> torch.nn.Module:
    """A copy of `model` with `weights` (by parameter name) in place of its own."""
    changed = copy.deepcopy(model)
    missing = set(weights) - {name for name, _ in changed.named_parameters()}
    if missing:
        raise ValueError(f"the peer changed parameters the model does not have: {sorted(missing)[:3]}")
    state = changed.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            state[name].copy_(value)
    return changed


def check_peer(method: str, weights: dict) -> None:
    """Guard against measuring a peer run that did not do what it was asked."""
    linears = [name for name in weights if ".layers." in name and name.endswith("proj.weight")]
    if len(linears) != len(weights) or not linears:
        raise RuntimeError(f"llm-compressor changed {sorted(weights)[:3]}..., not only the block linears")
    w, asked = weights[linears[0]], METHODS[method][0]
    if method == "gptq":
        size, levels = asked.group_size, 2**asked.bits
        distinct = max(len(group.unique()) for group in w.reshape(-1, size)[:512])
        if distinct > levels:
            raise RuntimeError(f"{linears[0]}: {distinct} distinct values in a group of {size}, not {levels} levels")
    elif abs(w.eq(0).float().mean().item() - asked.sparsity) > 0.01:
        raise RuntimeError(f"{linears[0]}: {w.eq(0).float().mean():.1%} zeros, not {asked.sparsity:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_options(parser)
    parser.add_argument("--peer-python", required=True, help="python of an environment with llmcompressor")
    parser.add_argument("--methods", default="gptq,sparsegpt")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {sorted(METHODS)}")

    protocol = Protocol(args)
    model, tok, calib = protocol.model, protocol.tokenizer, protocol.calib
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model.save_pretrained(work / "model")
        tok.save_pretrained(work / "model")
        save_file({"ids": calib.contiguous()}, work / "calib.safetensors")
        for method in methods:
            peer_seconds, weights = peer_weights(args.peer_python, work / "model", work / "calib.safetensors",
                                                 method, work)
            check_peer(method, weights)
            ours = copy.deepcopy(model)
            start = time.perf_counter()
            tc.apply(ours, METHODS[method][0], calib)
            seconds = time.perf_counter() - start
            for tool, compressed, took in (("llm-compressor", with_weights(model, weights), peer_seconds),
                                           ("tcompress", ours, seconds)):
                rows.append({"method": method, "tool": tool, "wikitext2_ppl": protocol.perplexity(compressed),
                             "seconds": took, "vs_llm_compressor": took / peer_seconds})
                show(rows[-1:])
    tc.report.write_json(Path(args.out) / "peers.json", rows)
    print(f"\n{protocol.describe()}")
    print(tc.report.format_table(rows))


if __name__ == "__main__":
    main()
