"""paddy under a real SLURM (one node, started by the fixture): DDP over srun tasks, and preemption
(SIGUSR1 -> hpc_ckpt_1.ckpt + `scontrol requeue` -> the requeued job resumes from it with resume=auto).

Needs root and Debian's slurm-wlm + munge (.ci/run installs them); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import TINY
from slurm_cluster import SlurmCluster, missing_requirement, start_cluster, stop_cluster

REPO = Path(__file__).resolve().parents[1]
# Two srun tasks = two DDP ranks (gloo), one CPU each.
TASKS = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"]
DDP = ["data=synthetic", "trainer=ddp_cpu", "trainer.devices=2",
       *(o for o in TINY if not o.startswith("trainer.devices="))]
# States a job does not leave (a requeued job passes through COMPLETING and PENDING instead).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def job_env(cluster: SlurmCluster, workdir: Path) -> dict[str, str]:
    """What srun/sbatch pass on to the tasks: this checkout's paddy, a private cache, no network."""
    env = dict(cluster.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PADDY_CACHE_DIR"] = str(workdir / "cache")
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    return env


def train_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "paddy.train", *DDP, *overrides]


def only_run_dir(workdir: Path, job_id: str) -> Path:
    run_dirs = sorted(p.relative_to(workdir).as_posix() for p in (workdir / "outputs").iterdir())
    assert run_dirs == [f"outputs/slurm-{job_id}"], "one run directory for the whole job, named after it"
    return workdir / "outputs" / f"slurm-{job_id}"


def history_epochs(run_dir: Path) -> list[int]:
    """Epochs in history.json; [] while it is missing or half written."""
    try:
        return json.loads((run_dir / "history.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return []


def test_srun_two_tasks_train_one_ddp_run(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # -v: srun prints the job id ("srun: jobid N: nodes(1):`vm', cpu counts: 2(x1)").
    command = ["srun", "-v", *TASKS, "--job-name=paddy-ddp", *train_command()]
    started = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=job_env(slurm_cluster, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    print(f"$ {shlex.join(command)}\n{result.stdout}\n(srun took {time.monotonic() - started:.1f} s)")
    assert result.returncode == 0, result.stdout[-4000:]

    job_id = re.search(r"srun: jobid (\d+)", result.stdout).group(1)
    run_dir = only_run_dir(tmp_path, job_id)
    for name in ("metrics.json", "history.json", "checkpoints/last.ckpt", "train.log"):
        assert (run_dir / name).is_file(), name
    assert history_epochs(run_dir) == [0, 1]
    # Lightning took the ranks from SLURM (only its SLURMEnvironment logs auto-requeue) and formed
    # one process group of both tasks (rank 0's line; the other ranks log warnings only).
    assert "SLURM auto-requeueing enabled" in result.stdout
    assert "All distributed processes registered. Starting with 2 processes" in result.stdout
    assert result.stdout.count("Done in") == 1, "rank 1 must stay quiet"


def batch_script(workdir: Path, command: list[str]) -> Path:
    """An sbatch script whose every run (first and requeued) logs to its own run-<restart>.log."""
    script = workdir / "job.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH {' '.join(TASKS)} --job-name=paddy-preempt --output=sbatch-%j.out
exec > "run-${{SLURM_RESTART_COUNT:-0}}.log" 2>&1
echo "job $SLURM_JOB_ID restart ${{SLURM_RESTART_COUNT:-0}}"
srun {shlex.join(command)}
""")
    return script


def stack_dumps_on_sigusr2(folder: Path) -> Path:
    """A sitecustomize for the job's PYTHONPATH: SIGUSR2 makes every rank print its Python stacks,
    so a hung job can say where each rank is stuck."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import faulthandler, signal\nfaulthandler.register(signal.SIGUSR2, all_threads=True)\n")
    return folder


def wait_for_epoch(cluster: SlurmCluster, job_id: str, run_dir: Path, timeout: float = 300) -> None:
    """Block until the job has finished its first epoch (so a signal now lands mid-training)."""
    deadline = time.monotonic() + timeout
    while not history_epochs(run_dir):
        state = cluster.job(job_id).get("JobState")
        assert state not in ENDED, f"job {job_id} ended ({state}) before its first epoch"
        assert time.monotonic() < deadline, f"no finished epoch after {timeout:.0f} s\n{cluster.log_tails()}"
        time.sleep(0.2)


def assert_requeued(cluster: SlurmCluster, job_id: str, log: Path, timeout: float = 90) -> None:
    """The signalled job must be requeued within ``timeout``. If not, its ranks are stuck: print their
    stacks (SIGUSR2, see stack_dumps_on_sigusr2), cancel the job and fail with them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.job(job_id).get("Restarts", "0") != "0":
            return
        time.sleep(0.5)
    cluster.run("scancel", "--signal=USR2", job_id, check=False)
    time.sleep(3)
    cluster.run("scancel", job_id, check=False)
    raise AssertionError(f"job {job_id} was not requeued {timeout:.0f} s after SIGUSR1: the ranks hang. "
                         f"{log.name} with the ranks' stacks:\n{log.read_text()[-12000:]}")


def test_preempted_job_is_requeued_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # 1232 training images, 77 steps per rank: an epoch takes a few seconds, so the signal sent
    # right after epoch 0 lands inside epoch 1 with epochs 2 and 3 still to go.
    command = train_command("data.source.samples_per_class=512", "trainer.max_epochs=4", "resume=auto")
    script = batch_script(tmp_path, command)
    env = job_env(slurm_cluster, tmp_path)
    env["PYTHONPATH"] += os.pathsep + str(stack_dumps_on_sigusr2(tmp_path / "site"))
    started = time.monotonic()
    submitted = subprocess.run(["sbatch", f"--chdir={tmp_path}", str(script)], env=env, capture_output=True,
                               text=True, timeout=60, check=True)
    print(f"$ sbatch {script.name}\n{submitted.stdout}{submitted.stderr}{script.read_text()}")
    job_id = re.fullmatch(r"Submitted batch job (\d+)\n", submitted.stdout).group(1)
    run_dir = tmp_path / "outputs" / f"slurm-{job_id}"

    wait_for_epoch(slurm_cluster, job_id, run_dir)
    signalled = slurm_cluster.run("scancel", "--signal=USR1", job_id)  # to the job's tasks, not the batch shell
    print(f"$ scancel --signal=USR1 {job_id} (after {time.monotonic() - started:.1f} s, epochs done: "
          f"{history_epochs(run_dir)})\n{signalled.stdout}{signalled.stderr}")
    assert_requeued(slurm_cluster, job_id, tmp_path / "run-0.log")
    info = slurm_cluster.wait_job(job_id, ENDED, timeout=600)
    logs = {name: (tmp_path / name).read_text() for name in ("run-0.log", "run-1.log") if (tmp_path / name).exists()}
    for name, text in logs.items():
        print(f"--- {name} ---\n{text}")
    print(f"job {job_id}: {info.get('JobState')}, restarts {info.get('Restarts')}, exit {info.get('ExitCode')} "
          f"after {time.monotonic() - started:.1f} s")

    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0"), info
    assert sorted(logs) == ["run-0.log", "run-1.log"], "the job ran twice: first and requeued"
    first, requeued = logs["run-0.log"], logs["run-1.log"]
    # The first run saved the hpc checkpoint and requeued the job instead of finishing.
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file()
    assert "Done in" not in first
    # The requeued run (same job id, SLURM_RESTART_COUNT=1) continued from it.
    assert requeued.startswith(f"job {job_id} restart 1\n")
    assert f"resume=auto: continuing from {hpc}" in requeued
    assert f"Restored all states from the checkpoint at {hpc}" in requeued
    assert requeued.count("Done in") == 1

    assert only_run_dir(tmp_path, job_id) == run_dir
    assert (run_dir / "metrics.json").is_file()
    assert history_epochs(run_dir) == [0, 1, 2, 3], "each epoch exactly once across the preemption"


@pytest.mark.slow
def test_tpe_sweep_through_submitit_slurm(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """hydra/launcher=submitit_slurm: 4 TPE trials, 2 in flight, run by 2 worker jobs (one SLURM array,
    one CPU each) that each take the next trial when theirs ends, reporting every epoch to the study in
    the sweep directory (the pruner's input).

    Slow (about 3 minutes): submitit follows its jobs with ``sacct``, and this test cluster has no
    accounting database, so it falls back to polling with growing pauses between its checks."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "paddy.train", "-m", "hparams_search=tpe", "hparams_search.n_trials=4",
               "data=synthetic", *TINY, "test=false", "logger=none", "hydra/launcher=submitit_slurm",
               "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
               "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=10", "hydra.sweeper.n_jobs=2",
               f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, cwd=tmp_path, env=job_env(slurm_cluster, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=600)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-4000:]
    trials = optuna.load_study(study_name="tpe", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert all(len(t.intermediate_values) == 2 for t in trials)  # reported from the SLURM jobs, every epoch
    job_logs = sorted((sweep / ".submitit").rglob("*_log.out"))
    assert len(job_logs) == 2, job_logs  # the 2 worker jobs
    assert len({t.system_attrs["paddy:owner"]["pid"] for t in trials}) == 2  # which shared the trials
    assert all((sweep / str(t.number) / "metrics.json").is_file() for t in trials)
