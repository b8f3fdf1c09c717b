"""Compress a tiny Llama and save the result's tensors (run by test_parallel.py, alone or
under `accelerate launch --num_processes 2`)."""

import sys

import torch

import tcompress as tc
from tcompress.engine.parallel import world

from helpers import VOCAB, tiny_llama

if __name__ == "__main__":
    calib = torch.randint(0, VOCAB, (16, 64), generator=torch.Generator().manual_seed(0))
    results = {}
    for text in sys.argv[2:]:
        torch.manual_seed(0)
        model = tiny_llama(num_hidden_layers=2)
        tc.apply(model, tc.engine.parse_method(text), calib, progress=False)
        state = dict(model.state_dict())
        state.update({f"{name}.codes": module.codes() for name, module in model.named_modules()
                      if hasattr(module, "codes")})
        results[text] = state
    rank, processes = world()
    torch.save({"processes": processes, "results": results}, f"{sys.argv[1]}.rank{rank}")
