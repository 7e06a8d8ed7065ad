"""Sweeps shared by several worker processes through one Optuna storage: a real PostgreSQL server
(started by the fixture), dead workers found by pid on this machine and by Optuna's heartbeat on any
other (a worker in its own UTS namespace has another host name), and re-queued trials.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from postgres_server import INSTALL_HINT, postgres_server, server_binaries
from test_sweeps import ROOT, _command

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

FAST_HEARTBEAT = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=5"]


@pytest.fixture(scope="module")
def postgres_url() -> str:
    if server_binaries() is None:
        pytest.skip(INSTALL_HINT)
    with postgres_server() as url:
        yield url


def storage_url(kind: str, sweep_dir: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{sweep_dir / 'optuna.db'}"
    return request.getfixturevalue("postgres_url")


def study_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url).trials


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Finished trials that count towards n_trials (interrupted ones were re-queued instead)."""
    retried = {t.system_attrs.get("paddy:retry_of") for t in trials}
    return [t for t in trials if t.state.is_finished() and not t.system_attrs.get("paddy:interrupted")
            and t.number not in retried]


def start_worker(sweep_dir: Path, log: Path, *overrides: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen([*prefix, *_command(sweep_dir, *overrides)], cwd=ROOT, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def launched_trials(logs: list[Path]) -> list[int]:
    """Trial numbers = job numbers each worker's launcher printed (``#3 : overrides``)."""
    return [int(n) for log in logs for n in re.findall(r"\t#(\d+) : ", log.read_text())]


def wait_all(workers: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    for worker, log in zip(workers, logs):
        assert worker.wait(timeout=timeout) == 0, log.read_text()[-4000:]


def test_three_workers_run_one_postgresql_study_and_grid_exactly_once(postgres_url: str, tmp_path: Path):
    tpe = ["hparams_search=tpe", "hparams_search.n_trials=6", f"hparams_search.storage={postgres_url}",
           "data.batch_size=8"]
    logs = [tmp_path / f"tpe{i}.log" for i in range(3)]
    wait_all([start_worker(tmp_path / "tpe", log, *tpe) for log in logs], logs)
    trials = study_trials(postgres_url, "tpe")
    assert len(counted(trials)) == 6 and all(t.state == TrialState.COMPLETE for t in counted(trials))
    assert sorted(launched_trials(logs)) == sorted(t.number for t in counted(trials))  # none run twice

    grid = ["hparams_search=grid", "optimizer.lr=choice(1e-3,2e-3,3e-3,4e-3)", "optimizer.weight_decay=0",
            "data.batch_size=8", f"hparams_search.storage={postgres_url}"]
    logs = [tmp_path / f"grid{i}.log" for i in range(3)]
    wait_all([start_worker(tmp_path / "grid", log, *grid) for log in logs], logs)
    points = sorted(t.params["optimizer.lr"] for t in counted(study_trials(postgres_url, "grid")))
    assert points == [1e-3, 2e-3, 3e-3, 4e-3]


def kill_when_training(worker: subprocess.Popen, sweep_dir: Path, log: Path) -> None:
    """kill -9 the worker (and its job) once one of its trials has finished an epoch."""
    deadline = time.monotonic() + 180
    mine = re.compile(r"\t#(\d+) : ")
    while True:
        assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        numbers = mine.findall(log.read_text())
        if numbers and (sweep_dir / numbers[-1] / "history.json").is_file():
            break
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def test_killed_worker_trial_is_queued_again_and_the_study_ends_at_n_trials(postgres_url: str, tmp_path: Path):
    args = ["hparams_search=tpe", "hparams_search.n_trials=4", f"hparams_search.storage={postgres_url}",
            "hparams_search.study_name=killed", "trainer.max_epochs=3", *FAST_HEARTBEAT]
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    workers = [start_worker(tmp_path, log, *args) for log in logs]
    kill_when_training(workers[0], tmp_path, logs[0])
    wait_all(workers[1:], logs[1:])
    trials = study_trials(postgres_url, "killed")
    assert len(counted(trials)) == 4
    copies = [t for t in trials if "paddy:retry_of" in t.system_attrs]
    assert len(copies) == 1 and copies[0].state.is_finished()
    original = trials[copies[0].system_attrs["paddy:retry_of"]]
    assert original.state == TrialState.FAIL and original.params == copies[0].params
    assert copies[0].system_attrs["paddy:retry_reason"].startswith("interrupted")


# PostgreSQL is the store shared across machines; the same heartbeat over SQLite runs with -m slow.
@pytest.mark.parametrize("kind", [pytest.param("sqlite", marks=pytest.mark.slow), "postgresql"])
def test_worker_dead_on_another_host_is_found_by_its_heartbeat(kind: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--uts", "true"]).returncode != 0:
        pytest.skip("needs unshare --uts (root on Linux) to give a worker another host name")
    url = storage_url(kind, tmp_path, request)
    args = ["hparams_search=tpe", "hparams_search.n_trials=2", f"hparams_search.storage={url}",
            f"hparams_search.study_name=heartbeat_{kind}", "trainer.max_epochs=3", *FAST_HEARTBEAT]
    elsewhere = ("unshare", "--uts", "sh", "-c", 'hostname other-machine && exec "$@"', "sh")
    log = tmp_path / "other.log"
    kill_when_training(start_worker(tmp_path, log, *args, prefix=elsewhere), tmp_path, log)
    here = tmp_path / "here.log"
    wait_all([start_worker(tmp_path, here, *args)], [here])
    trials = study_trials(url, f"heartbeat_{kind}")
    [copy] = [t for t in trials if "paddy:retry_of" in t.system_attrs]
    dead = trials[copy.system_attrs["paddy:retry_of"]]
    assert dead.state == TrialState.FAIL and dead.system_attrs["paddy:owner"]["host"] == "other-machine"
    assert copy.system_attrs["paddy:retry_reason"] == "interrupted: no heartbeat for 5 s (its worker died)"
    assert copy.params == dead.params and copy.state == TrialState.COMPLETE
    assert len(counted(trials)) == 2


def test_submitit_local_runs_the_sweep_as_two_worker_jobs(tmp_path: Path):
    """hydra/launcher=submitit_local with 2 in flight: one submission of 2 worker jobs (schedule=workers),
    each running trials one after another and reporting every epoch to the study (so the pruner sees them)."""
    log = tmp_path / "submitit.log"
    worker = start_worker(tmp_path, log, "hparams_search=tpe", "hparams_search.n_trials=4",
                          "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "trainer.max_epochs=2")
    wait_all([worker], [log])
    trials = study_trials(f"sqlite:///{tmp_path / 'optuna.db'}", "tpe")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all(len(t.intermediate_values) == 2 for t in trials)  # reported from the jobs, every epoch
    assert log.read_text().count("Submitit 'local' sweep output dir") == 1  # one submission
    assert len(list((tmp_path / ".submitit").rglob("*_log.out"))) == 2  # of 2 worker jobs
    assert len({t.system_attrs["paddy:owner"]["pid"] for t in trials}) == 2  # which shared the trials
    assert all((tmp_path / str(t.number) / "metrics.json").is_file() for t in trials)


def slot_sweep(sweep_dir: Path, *overrides: str) -> list[optuna.trial.FrozenTrial]:
    """A sweep of benchmarks/slot_trial.py (trials that only sleep, epoch by epoch) through submitit_local."""
    command = [sys.executable, str(ROOT / "benchmarks" / "slot_trial.py"), "-m", f"hydra.sweep.dir={sweep_dir}",
               "epoch_s=0.5", *overrides]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return study_trials(f"sqlite:///{sweep_dir / 'optuna.db'}", "slots")


def test_a_free_slot_takes_the_next_trial_at_once(tmp_path: Path):
    """schedule=workers: no batch barrier. A worker starts its next trial as soon as its last one ends,
    while a longer trial goes on in the other slot (with schedule=batch that trial would hold it back)."""
    trials = slot_sweep(tmp_path, "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=6", "seed=1",
                        "epochs=choice(1,8)", "hydra.sweeper.pruner.name=none")
    ran = [(t.user_attrs["ran_from"], t.user_attrs["ran_to"], t.system_attrs["paddy:owner"]["pid"]) for t in trials]
    assert len(ran) == 6 and len({pid for *_, pid in ran}) == 2  # each trial ran once, in one of 2 workers
    assert {t.params["epochs"] for t in trials} == {1, 8}  # lengths differ (fixed by the seed)
    switches = [(b_end, c_start) for b_start, b_end, worker in ran for c_start, _, other in ran
                if other == worker and c_start >= b_end]
    assert any(a_start < b_end and a_end > c_start
               for a_start, a_end, _ in ran for b_end, c_start in switches), ran


def test_a_killed_worker_job_loses_no_trial(tmp_path: Path):
    """kill -9 of one worker job: its sweep process dies with it, the trial it ran is queued again and
    run by the other worker (or the launching process), and the study still ends at n_trials."""
    command = [sys.executable, str(ROOT / "benchmarks" / "slot_trial.py"), "-m", f"hydra.sweep.dir={tmp_path}",
               "epoch_s=0.5", "epochs=6", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=5",
               "hydra.sweeper.pruner.name=none"]
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        sweep = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    deadline = time.monotonic() + 120
    running: list = []
    while not running:
        assert sweep.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)
        if not (tmp_path / "optuna.db").is_file():
            continue
        try:
            running = [t for t in study_trials(url, "slots") if t.state == TrialState.RUNNING and "ran_from" in
                       t.user_attrs]
        except KeyError:  # the database is there, the study not yet
            continue
    worker = running[0].system_attrs["paddy:owner"]["pid"]
    job = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent: the job
    os.kill(job, signal.SIGKILL)
    for _ in range(50):  # the worker's sweep process follows its job
        if not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the sweep process {worker} outlived its killed job {job}")
    assert sweep.wait(timeout=180) == 0, log.read_text()[-4000:]
    trials = study_trials(url, "slots")
    assert len(counted(trials)) == 5 and all(t.state == TrialState.COMPLETE for t in counted(trials))
    [copy] = [t for t in trials if "paddy:retry_of" in t.system_attrs]
    assert copy.params == running[0].params and copy.system_attrs["paddy:retry_of"] == running[0].number


@pytest.mark.slow
def test_batch_schedule_waits_for_the_slowest_trial(tmp_path: Path):
    """schedule=batch (Hydra's way), for comparison: 2 trials per launch, the next launch after both end."""
    trials = slot_sweep(tmp_path, "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4", "seed=1",
                        "hydra.sweeper.schedule=batch", "epochs=choice(1,8)",
                        "hydra.sweeper.pruner.name=none")
    ran = sorted((t.user_attrs["ran_from"], t.user_attrs["ran_to"]) for t in trials)
    assert max(end for _, end in ran[:2]) <= min(start for start, _ in ran[2:])


CHROMIUM = shutil.which("chromium")




@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_optuna_dashboard_lists_the_trials_in_a_browser(tmp_path: Path):
    """optuna-dashboard against a sweep's storage, read by a real headless Chromium."""
    log = tmp_path / "sweep.log"
    wait_all([start_worker(tmp_path, log, "hparams_search=tpe", "hparams_search.n_trials=3", "trainer.max_epochs=2")],
             [log])
    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"),
                                  f"sqlite:///{tmp_path / 'optuna.db'}", "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        page = f"http://127.0.0.1:{port}/dashboard/studies/1"
        browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                   "--window-size=1400,1000"]
        deadline = time.monotonic() + 30
        dom = ""
        while "Trial 2" not in dom and time.monotonic() < deadline:
            dom = subprocess.run([*browser, "--dump-dom", f"{page}/trials"], capture_output=True, text=True,
                                 timeout=90).stdout
        subprocess.run([*browser, f"--screenshot={tmp_path / 'dashboard.png'}", page], capture_output=True,
                       timeout=90)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
    assert all(f"Trial {n}" in dom for n in range(3)), dom[-2000:]
    assert (tmp_path / "dashboard.png").stat().st_size > 20_000
