"""A real PostgreSQL 15 (Debian's package) on a free loopback port, for the suite's PostgreSQL pass.

`initdb` and `postgres` refuse to run as root, so as root they run as the `postgres` system user the
package creates. The cluster lives in a temporary directory and is stopped and removed afterwards. Every
test gets its own database, copied from a template the hub's schema was created in once."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} not found: install Debian's postgresql (./run does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="citybrain-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        self._n = itertools.count(1)
        self.template: str | None = None

    def _run(self, *cmd: str) -> None:
        if self._as_root:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PgServer:
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        # Test cluster: durability off (nothing here must survive a power cut), room for many pools.
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off -c max_connections=400")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "server.log"), "-w",
                  "-t", "60", "start")
        with self.admin() as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # into template1: every new database has it
        return self

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="template1",
                               autocommit=True)

    def create_database(self, template: str | None = None) -> str:
        name = f"t{os.getpid()}_{next(self._n)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as c:
            tpl = f" TEMPLATE {template}" if template else ""
            c.execute(f"CREATE DATABASE {name}{tpl}")
        return name

    def stop(self) -> None:
        try:
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        # Every test's database is a few MB and a pass leaves hundreds (GBs): deleting them took 40-85 s of
        # the pass's wall clock, so a detached `rm` does it while pytest exits.
        subprocess.Popen(["rm", "-rf", "--", str(self.dir)], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
