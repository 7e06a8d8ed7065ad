"""A throw-away PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a data folder in a
temporary directory, trust authentication on 127.0.0.1 and a free port.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (which the
Debian package creates).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import free_port

INSTALL_HINT = "needs Debian's postgresql server (apt-get install -y postgresql)"


def server_binaries() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server(database: str = "paddy") -> Iterator[str]:
    """Start a server, create ``database``, yield its SQLAlchemy URL (psycopg 3), stop it afterwards."""
    binaries = server_binaries()
    if binaries is None:
        raise FileNotFoundError(INSTALL_HINT)
    root = Path(tempfile.mkdtemp(prefix="paddy-pg-"))
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    run = lambda command: subprocess.run(_as_server_user(command), check=True, capture_output=True,  # noqa: E731
                                         text=True, timeout=120)
    run([str(binaries / "initdb"), "-D", str(data), "--auth=trust", "--username=postgres", "--no-sync"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    run([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"])
    try:
        run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database])
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
