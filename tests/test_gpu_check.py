"""``make gpu-check`` (scripts/gpu_check.py) on a machine without CUDA (here the CUDA step and the one after it):
it stops before the first CUDA step with one line saying why, and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop on a machine without CUDA")
def test_gpu_check_stops_before_the_first_cuda_step_and_says_why(tmp_path: Path):
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path),
                             "--steps", "cuda,tests"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no CUDA device: " in result.stdout and "the GPU check needs the lent GPU machine" in result.stdout
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = {name: step["status"] for name, step in record["steps"].items()}
    assert statuses["cuda"] == "no-cuda"
    assert "tests" not in statuses and record["exit_status"] == 2  # nothing after the CUDA step ran
    assert (tmp_path / "gpu_check.log").read_text().count("no CUDA device") == 1
