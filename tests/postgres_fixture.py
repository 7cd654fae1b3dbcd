"""A throwaway PostgreSQL server for the tests of studies shared by several drivers: Debian's server
binaries, a data directory in /tmp, a free loopback port, trust authentication. Skipped where no
server binary exists, except where ``NLSEARCH_REQUIRE_POSTGRES`` is set (``.ci/run``), which makes a
missing server a failure, so these tests never skip themselves into green there. Runs the server as
the ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root)."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _binary(name: str):
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self):
        initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not (initdb and self.pg_ctl):
            if os.environ.get("NLSEARCH_REQUIRE_POSTGRES"):
                pytest.fail("NLSEARCH_REQUIRE_POSTGRES is set but no PostgreSQL server binaries were found")
            pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
        self.folder = Path(tempfile.mkdtemp(prefix="nlsearch-pg-"))
        self.data = self.folder / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self.port = _free_port()
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "nlsearch", "--no-sync"])
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "start", "-o",
                   f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c fsync=off -c max_connections=200"])
        self.databases = 0

    def _run(self, argv):
        out = subprocess.run(self.as_user + argv, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {out.stdout}{out.stderr}")

    def new_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL."""
        import psycopg

        self.databases += 1
        name = f"study{self.databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=nlsearch dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://nlsearch@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(self.as_user + [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    if not os.environ.get("NLSEARCH_REQUIRE_POSTGRES"):
        pytest.importorskip("psycopg")
    server = Server()
    yield server
    server.stop()
