"""Train a tiny student from a tiny teacher and write the loss curve (run by
test_distributed.py, alone or under `accelerate launch --num_processes 2`)."""

import json
import sys

import torch

from tcompress.distill import HiddenKD, LogitKD, TrainConfig, distill, student_from

from helpers import VOCAB, tiny_llama

if __name__ == "__main__":
    torch.manual_seed(0)
    teacher = tiny_llama(num_hidden_layers=4).eval()
    student = student_from(teacher, blocks=2)
    data = torch.randint(0, VOCAB, (32, 16), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=8, batch_size=8, micro_batch_size=2, lr=2e-3)
    history = distill(student, data, [LogitKD(), HiddenKD(weight=0.5)], config, teacher=teacher, progress=False)
    import accelerate

    if accelerate.PartialState().is_main_process:
        json.dump({"loss": [row["loss"] for row in history.steps],
                   "processes": accelerate.PartialState().num_processes}, open(sys.argv[1], "w"))
