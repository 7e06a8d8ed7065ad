"""paddy under Lightning DDP on the CPU (gloo, 2 real processes), launched by Lightning and by torchrun,
and a resume that changes nothing: kill -9 + resume=auto, 0/1/2 loader workers, device augmentation.

The SLURM launcher and preemption are in tests/test_slurm.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TINY, free_port

from paddy.config import compose_config
from paddy.evaluate import evaluate
from paddy.pipeline import train

REPO = Path(__file__).resolve().parents[1]
# 3 classes x 13 images: val and test hold 9 images each, which 2 processes cannot split evenly.
ODD_SPLITS = ["data=synthetic", "data.source.num_classes=3", "data.source.samples_per_class=13"]
DDP = ["trainer=ddp_cpu", "trainer.devices=2"]
SERIES = ("train_loss", "train_acc", "train_f1", "valid_loss", "valid_acc", "valid_f1", "learning_rates")
UNTIMED = {"epoch_times", "total_time_s", "fps", "ckpt_path", "last_ckpt_path"}


def tiny_cli(*extra: str) -> list[str]:
    """TINY without its single-device setting when DDP is asked for."""
    base = [o for o in TINY if not (o.startswith("trainer.devices") and any("ddp" in e for e in extra))]
    return [*base, *extra]


def run_paddy(args: list[str], cwd: Path, timeout: int = 240, module: str = "paddy.train",
              script: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PADDY_CACHE_DIR": str(cwd / "cache"),
           "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", module]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def only_run_dir(cwd: Path) -> Path:
    runs = [p.parent for p in (cwd / "outputs").rglob("metrics.json")]
    assert len(runs) == 1, f"expected one run directory with metrics.json, found {runs}"
    return runs[0]


def assert_same_run(a: dict, b: dict, what: str) -> None:
    for key in sorted(set(a) | set(b)):
        if key in UNTIMED:
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, float) and isinstance(y, float):
            assert math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9), f"{what} {key}: {x} vs {y}"
        else:
            assert x == y, f"{what} {key}: {x} vs {y}"


def assert_same_history(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"]
    for key in SERIES:
        for epoch, (x, y) in enumerate(zip(a[key], b[key])):
            assert math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9), f"history {key} epoch {epoch}: {x} vs {y}"


# ------------------------------------------------------------------------------------- DDP


def test_ddp_counts_every_image_once_writes_one_run_and_resumes_across_world_sizes(tmp_path: Path):
    result = run_paddy([*ODD_SPLITS, *tiny_cli(*DDP), "trainer.max_epochs=1"], tmp_path)
    log = output_of(result)
    assert result.returncode == 0, log[-3000:]
    assert log.count("Done in") == 1, log[-3000:]
    run = only_run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 21, "val": 9, "test": 9}
    for split in ("val", "test"):  # every image counted once by 2 processes (no padding)
        assert sum(map(sum, metrics["confusion_matrix"][split])) == metrics["split_sizes"][split]
    alone = evaluate(run, latency_runs=0, throughput_runs=0, num_workers=0, device="cpu")
    assert alone["num_samples"] == 9 and metrics["test_acc"] == pytest.approx(alone["accuracy"], abs=1e-7)
    assert {p.name for p in run.iterdir()} >= {"metrics.json", "history.json", "training_plot.png", "tensorboard",
                                                 "checkpoints", ".hydra"}
    # TensorBoard files (one for fit, one for test) all come from one process: rank 0.
    writers = {p.name.split(".")[4] for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    assert len(writers) == 1, writers

    # The DDP checkpoint continues in one process, and that one's under DDP again.
    single = train(compose_config([*ODD_SPLITS, *TINY, "trainer.max_epochs=2", "resume=auto",
                                   f"paths.output_dir={run}"]))
    assert single["epochs_run"] == 2
    result = run_paddy([*ODD_SPLITS, *tiny_cli(*DDP), "trainer.max_epochs=3", "resume=auto",
                        f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 0, output_of(result)[-3000:]
    assert json.loads((run / "history.json").read_text())["epoch"] == [0, 1, 2]


def test_torchrun_two_nodes_share_one_run_directory(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PADDY_CACHE_DIR": str(tmp_path / "cache"),
           "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    args = [*ODD_SPLITS, *tiny_cli("trainer=ddp_cpu"), "trainer.devices=1", "trainer.num_nodes=2"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                               f"--node-rank={rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                               "-m", "paddy.train", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    run = only_run_dir(tmp_path)
    assert len([p for p in (tmp_path / "outputs").rglob(".hydra") if (p / "config.yaml").is_file()]) == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(map(sum, metrics["confusion_matrix"]["test"])) == 9
    assert sum(log.count("Done in") for log in logs) == 1


NAN_SCRIPT = """
import logging, sys
import torch
from lightning import Callback
from paddy.config import compose_config
from paddy.errors import reported
from paddy.pipeline import train

class NaNOnRankOne(Callback):
    \"\"\"Global rank 1 feeds NaN images from its second step on; rank 0 stays finite.\"\"\"
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step >= 1:
            batch[0].fill_(float("nan"))

logging.basicConfig(level=logging.INFO)
with reported(logging.getLogger("paddy")):
    train(compose_config(sys.argv[1:]), extra_callbacks=[NaNOnRankOne()])
"""


def test_nan_on_one_rank_stops_every_rank_with_exit_3(tmp_path: Path):
    script = tmp_path / "nan_on_rank_one.py"
    script.write_text(textwrap.dedent(NAN_SCRIPT))
    args = [*ODD_SPLITS, *tiny_cli(*DDP), "trainer.max_epochs=3", "trainer_guard.max_bad_steps=2",
            "data.source.samples_per_class=40", f"paths.output_dir={tmp_path / 'run'}"]
    result = run_paddy(args, tmp_path, timeout=180, script=script)  # a hang fails here
    log = output_of(result)
    assert result.returncode == 3, log[-3000:]
    assert log.count("non-finite loss or gradients for 2 optimizer steps in a row") == 2, log[-3000:]
    assert "Traceback" not in log


# ------------------------------------------------------------------------------------- resume


DETERMINISTIC = ["data=synthetic", "data.source.samples_per_class=96", "seed=7", "trainer.deterministic=true",
                 "trainer.max_epochs=4", "logger=none"]


def test_kill_9_then_resume_auto_equals_the_uninterrupted_run(tmp_path: Path):
    straight = train(compose_config([*TINY, *DETERMINISTIC, f"paths.output_dir={tmp_path / 'straight'}"]))
    run = tmp_path / "killed"
    args = [*TINY, *DETERMINISTIC, "resume=auto", f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PADDY_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "paddy.train", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:  # kill it in epoch 2
        history = run / "history.json"
        if history.is_file() and len(json.loads(history.read_text() or "{}").get("epoch", [])) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "metrics.json").exists()
    result = run_paddy(args, tmp_path)
    assert result.returncode == 0, output_of(result)[-3000:]
    assert "resume=auto: continuing from" in output_of(result)
    assert_same_history(json.loads((run / "history.json").read_text()),
                        json.loads((tmp_path / "straight" / "history.json").read_text()))
    assert_same_run(json.loads((run / "metrics.json").read_text()), straight, "metrics.json")


@pytest.mark.parametrize("gpu_augment", ["false", "true"])
def test_resume_with_augmentation_equals_the_uninterrupted_run(gpu_augment: str, tmp_path: Path):
    """Augmentation on (on the CPU, or the device-side path run on the CPU): stop after epoch 1,
    resume to epoch 2, same history as 2 epochs in one go."""
    options = [*TINY, *DETERMINISTIC, f"data.gpu_augment={gpu_augment}", "trainer.max_epochs=2",
               "scheduler.t_max_epochs=2", "data.source.samples_per_class=32"]
    straight = train(compose_config([*options, f"paths.output_dir={tmp_path / 'a'}"]))
    train(compose_config([*options, "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'b'}"]))
    resumed = train(compose_config([*options, "resume=auto", f"paths.output_dir={tmp_path / 'b'}"]))
    assert_same_history(json.loads((tmp_path / "b" / "history.json").read_text()),
                        json.loads((tmp_path / "a" / "history.json").read_text()))
    assert_same_run(resumed, straight, "metrics")


def test_loader_workers_do_not_change_the_result(tmp_path: Path):
    runs = {}
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        runs[workers] = train(compose_config([*TINY, *DETERMINISTIC, "trainer.max_epochs=2",
                                              "data.source.samples_per_class=32", f"data.num_workers={workers}",
                                              f"paths.output_dir={out}"]))
        runs[workers]["history"] = json.loads((out / "history.json").read_text())
    for workers in (1, 2):
        assert_same_history(runs[workers].pop("history"), runs[0]["history"])
        assert_same_run(runs[workers], {k: v for k, v in runs[0].items() if k != "history"}, f"{workers} workers")


# ------------------------------------------------------------------------------------- data, once

PREPARE_SCRIPT = """
import sys
from paddy.data import ImageDataModule, PaddyDoctorSource
from paddy.data import validation

decodes = 0
check = validation.check_and_decode

def counted(path, *args):
    global decodes
    decodes += 1
    return check(path, *args)

validation.check_and_decode = counted
dm = ImageDataModule(PaddyDoctorSource, root=sys.argv[1], image_size=32, num_workers=0, cache_dir=sys.argv[2],
                     cache=sys.argv[3])
dm.setup()
print("DECODES", decodes)
"""


@pytest.mark.parametrize("cache", ["memmap", "none"])
def test_two_processes_verify_and_cache_the_dataset_once(cache: str, paddy_root: Path, tmp_path: Path):
    """What DDP processes do at the same time: the first verifies (and fills the cache), the other
    finds the verdicts (and the pixels) stored and decodes nothing."""
    script = tmp_path / "prepare.py"
    script.write_text(textwrap.dedent(PREPARE_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    processes = [subprocess.Popen([sys.executable, str(script), str(paddy_root), str(tmp_path / "cache"), cache],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    decodes = sorted(int(out.split("DECODES")[1]) for out, _ in outputs)
    assert decodes == [0, 24]
