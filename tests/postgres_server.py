"""A real PostgreSQL server for a test: Debian's package, a cluster in a temporary folder,
listening on a free loopback port, stopped and removed on the way out.

PostgreSQL refuses to run as root: as root, the cluster is made and run as the
`postgres` user the package creates. Without the package the tests that need it fail
with the command that installs it: a database test is never skipped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from entropy_serve.server.process import free_port

INSTALL_HINT = (
    "PostgreSQL is not installed: `apt-get install postgresql` (Debian's package) puts initdb and pg_ctl in place"
)


def postgres_bin() -> Path:
    """The folder holding initdb and pg_ctl (Debian keeps them per version)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(INSTALL_HINT)
    return Path(found[-1]).parent


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """The URL of a fresh server (user `postgres`, trusted on loopback, database `postgres`)."""
    bin_dir = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="entropy-serve-pg-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
