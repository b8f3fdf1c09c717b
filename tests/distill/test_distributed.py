"""Two-process training (`accelerate launch`, torchrun + gloo on CPU) gives the loss curve
of one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    subprocess.run([sys.executable, "distributed_worker.py", str(tmp_path / "one.json")], cwd=HERE, env=env,
                   check=True, capture_output=True)
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]
    run = subprocess.run([*launch, "distributed_worker.py", str(tmp_path / "two.json")], cwd=HERE, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
