"""llm-compressor's GPTQ or SparseGPT on a saved model, for `benchmarks/peers.py`.

Runs in an environment with `llmcompressor` installed (it may pin other versions of
transformers than tcompress's, so it runs as its own process; `-P` keeps this folder off
its path, where `kernels.py` would shadow the package of that name transformers looks for):

    python -P benchmarks/peer_llmcompressor.py --model DIR --calib ids.safetensors \\
        --method gptq --bits 4 --group-size 64 --out weights.safetensors

Calibrates on the given token ids as they are (no shuffling, no re-tokenization), times
`oneshot` alone, writes the changed weights (the quantized ones as the float values of
their codes, which is what llm-compressor computes with) and prints a JSON line with the
wall time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def recipe(args: argparse.Namespace):
    if args.method == "gptq":
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        weights = QuantizationArgs(num_bits=args.bits, type="int", symmetric=False, strategy="group",
                                   group_size=args.group_size)
        return GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                            ignore=["re:.*lm_head"])
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    # the ignore list as a regex: a plain "lm_head" is not honoured for a tied head
    return SparseGPTModifier(sparsity=args.sparsity, mask_structure="0:0", targets=["Linear"],
                             ignore=["re:.*lm_head"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model folder")
    parser.add_argument("--calib", required=True, help="safetensors file with an `ids` tensor [n, seqlen]")
    parser.add_argument("--method", choices=["gptq", "sparsegpt"], required=True)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out", required=True, help="safetensors file for the changed weights")
    args = parser.parse_args()

    from llmcompressor import oneshot

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = load_file(args.calib)["ids"]
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    start = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe(args), num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, pipeline="sequential")
    seconds = time.perf_counter() - start
    after = dict(model.named_parameters())
    changed = {name: after[name].detach().contiguous() for name in before
               if name in after and not torch.equal(after[name], before[name])}
    save_file(changed, args.out)
    print(json.dumps({"seconds": seconds, "changed": len(changed)}))


if __name__ == "__main__":
    main()
