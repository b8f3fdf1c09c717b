"""Data-parallel calibration: two processes (`accelerate launch`, gloo on CPU), each with
half the batches and the statistics summed, compress to what one process does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcompress.engine.parallel import share

HERE = Path(__file__).parent


def test_each_process_takes_a_contiguous_share():
    batches = list(range(7))
    shares = [share(batches, rank, 3) for rank in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="3 processes need at least as many calibration batches; there are 2"):
        share([0, 1], 0, 3)


METHODS = ["gptq:bits=4,group_size=16", "wanda:sparsity=0.5", "outliers:threshold=0.5"]  # sums and a maximum


@pytest.mark.slow
def test_two_processes_compress_as_one(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    subprocess.run([sys.executable, "parallel_worker.py", str(tmp_path / "one"), *METHODS], cwd=HERE, env=env,
                   check=True, capture_output=True)
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29518"]
    run = subprocess.run([*launch, "parallel_worker.py", str(tmp_path / "two"), *METHODS], cwd=HERE, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    one = torch.load(tmp_path / "one.rank0")
    two = [torch.load(tmp_path / f"two.rank{rank}") for rank in range(2)]
    assert one["processes"] == 1 and [t["processes"] for t in two] == [2, 2]
    for method in METHODS:
        for name, tensor in one["results"][method].items():
            for other in two:  # every process ends with the same model: the one-process one
                theirs = other["results"][method][name]
                if name.endswith(".codes"):  # float summation order may move a code across a rounding boundary
                    assert (theirs == tensor).float().mean() >= 0.999, (method, name)
                elif tensor.is_floating_point():
                    torch.testing.assert_close(theirs, tensor, rtol=1e-3, atol=1e-4, msg=f"{method} {name}")
