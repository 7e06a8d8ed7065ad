"""A real single-node SLURM cluster (munged + slurmctld + slurmd) for the tests, started as root.

Everything it writes (slurm.conf, state, spool, pid and log files, munge's socket) lives in one
folder per test session under ``/tmp/paddy-slurm/``; the clients find the cluster through the
``SLURM_CONF`` environment variable of :attr:`SlurmCluster.env`, so /etc/slurm is never touched.
Its own munged (private socket) and free TCP ports keep it apart from any other SLURM or munge on
the machine, and from a concurrent test session. Daemons left behind by a killed session are
stopped by their pid files at the next start (and whatever still runs with that cluster's
SLURM_CONF is killed).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import free_port

BASE = Path("/tmp/paddy-slurm")  # short: a unix socket path must stay under 108 bytes
DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order: the node first, munge last
BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "srun", "sbatch", "scontrol", "scancel")
INSTALL_HINT = "needs Debian's slurm-wlm and munge, run as root: apt-get install -y slurm-wlm munge"


def missing_requirement() -> str | None:
    """Why this machine cannot host the test cluster, or None when it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"{INSTALL_HINT} (missing: {', '.join(missing)})"
    if os.geteuid() != 0:
        return f"{INSTALL_HINT} (not running as root)"
    if not Path("/etc/munge/munge.key").is_file():
        return f"{INSTALL_HINT} (no /etc/munge/munge.key)"
    return None


@dataclass
class SlurmCluster:
    root: Path
    host: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def pid_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.log"

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A SLURM client command against this cluster."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=check)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, RestartCnt, ExitCode, ...); {} once it is forgotten."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, done: set[str], timeout: float, poll: float = 1.0) -> dict[str, str]:
        """Poll until the job's state is in ``done``; fail with the daemons' logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in done:
                return info
            time.sleep(poll)
        raise AssertionError(f"job {job_id} not in {sorted(done)} after {timeout:.0f} s: {info}\n{self.log_tails()}")

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for daemon in DAEMONS:
            path = self.log_file(daemon)
            tail = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)


def real_memory_mb() -> int:
    """Half the machine's memory: slurmd drains a node whose RealMemory exceeds what it finds."""
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return max(500, total_kb // 2048)


def slurm_conf(cluster: SlurmCluster, ctld_port: int, slurmd_port: int) -> str:
    root, host = cluster.root, cluster.host
    return f"""\
ClusterName=paddytest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (+ a few s) before it may start again (default 120 s).
AuthInfo=socket={root}/munge.sock,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={cluster.pid_file("slurmctld")}
SlurmdPidFile={cluster.pid_file("slurmd")}
SlurmctldLogFile={cluster.log_file("slurmctld")}
SlurmdLogFile={cluster.log_file("slurmd")}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
# Requeue (Lightning's auto-requeue runs `scontrol requeue`): allowed by default, and a job
# stays visible to `scontrol show job` long enough for the tests to read its final state.
JobRequeue=1
MinJobAge=600
# A requeued or cancelled job's processes get SIGKILL 2 s after SIGTERM (default 30; Lightning's
# SLURM plugin ignores SIGTERM, so a requeued job always waits this long).
KillWait=2
# The requeued job becomes eligible again after cred_expire; look for it every second, not every
# 30 s (backfill) or 60 s (main scheduler).
SchedulerParameters=sched_interval=1,bf_interval=1
MailProg=/bin/true
NodeName={host} CPUs={os.cpu_count()} RealMemory={real_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def stop_daemon(pid_file: Path, name: str, grace: float = 10.0) -> None:
    """SIGTERM the daemon named in ``pid_file`` (if it is still that daemon), SIGKILL after ``grace``."""
    try:
        pid = int(pid_file.read_text().split()[0])
        if not Path(f"/proc/{pid}/comm").read_text().strip().startswith(name):
            return  # the pid now belongs to some other process
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and running(pid):
        time.sleep(0.05)
    if running(pid):
        os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    try:
        return process_identity(pid) != ""
    except OSError:
        return False


def kill_leftovers(conf: Path) -> None:
    """SIGKILL every process still running for this cluster: each daemon, job step and task carries
    its ``SLURM_CONF`` in its environment (slurmstepd and a hung job's ranks outlive the daemons)."""
    marker = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue  # gone meanwhile, or not ours to read


def process_identity(pid: int) -> str:
    """``<pid> <start time>``: names one process for good, even after its pid is reused; "" once it
    has exited (a zombie)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3, the state
    return "" if fields[0] in "ZX" else f"{pid} {fields[19]}"  # field 22: the start time


def owner_alive(root: Path) -> bool:
    """Whether the test session that started the cluster in ``root`` still runs."""
    try:
        identity = (root / "owner").read_text()
        return identity == process_identity(int(identity.split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def remove_stale_clusters() -> None:
    """Stop the daemons of clusters whose test session died without stopping them, and wipe their folders."""
    for root in BASE.glob("*"):
        if root.is_dir() and not owner_alive(root):
            for daemon in DAEMONS:
                stop_daemon(root / f"{daemon}.pid", daemon)
            kill_leftovers(root / "slurm.conf")
            shutil.rmtree(root, ignore_errors=True)


def client_env(conf: Path) -> dict[str, str]:
    """This process' environment for SLURM clients: our slurm.conf, and no SLURM_* variables of an
    enclosing job (pytest itself may run inside one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(conf)
    return env


def start_cluster(timeout: float = 60.0) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in a fresh folder; return once ``sinfo`` shows the node idle."""
    remove_stale_clusters()
    cluster = SlurmCluster(root=BASE / str(os.getpid()), host=socket.gethostname().split(".")[0])
    for sub in ("state", "spool"):
        (cluster.root / sub).mkdir(parents=True)
    cluster.root.chmod(0o755)  # munged insists that its socket's folder be reachable by everyone
    (cluster.root / "owner").write_text(process_identity(os.getpid()))
    cluster.conf.write_text(slurm_conf(cluster, free_port(), free_port()))
    cluster.env = client_env(cluster.conf)
    commands = [  # each forks into the background once it is set up
        ["munged", "--force", f"--socket={cluster.root}/munge.sock", "--key-file=/etc/munge/munge.key",
         f"--pid-file={cluster.pid_file('munged')}", f"--log-file={cluster.log_file('munged')}",
         f"--seed-file={cluster.root}/munged.seed"],
        ["slurmctld", "-c", "-f", str(cluster.conf)],  # -c: no job state from an earlier start
        ["slurmd", "-f", str(cluster.conf)],
    ]
    try:
        for command in commands:
            started = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=30)
            if started.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} exited {started.returncode}: {started.stderr.strip()}")
        wait_idle(cluster, timeout)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def wait_idle(cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    raise RuntimeError(f"the SLURM node is not idle after {timeout:.0f} s (sinfo: {state!r})\n{cluster.log_tails()}")


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel what still runs (slurmd's job steps outlive slurmd), stop the daemons, remove the folder."""
    if cluster.pid_file("slurmctld").exists():
        cluster.run("scancel", "--user=root", "--full", timeout=30, check=False)
        time.sleep(1)
    for daemon in DAEMONS:
        stop_daemon(cluster.pid_file(daemon), daemon)
    kill_leftovers(cluster.conf)
    shutil.rmtree(cluster.root, ignore_errors=True)
