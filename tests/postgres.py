"""A throwaway PostgreSQL server for tests: ``initdb`` into a temporary directory, a free port on 127.0.0.1, stopped
and removed at the end.

The binaries come from ``PATH`` or ``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` user (``runuser``) with its data directory owned by that user. Trust
authentication, no Unix socket outside the data directory, and no durability settings that only slow a test down
(``fsync=off``): a clean ``stop`` still writes everything, an ``immediate`` one may lose the last commits.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_binaries"]

BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (or no ``postgres`` user to run them as root)."""


def find_binaries() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises:
        PostgresUnavailable: none found (the message says where it looked).
    """
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all((directory / name).is_file() for name in BINARIES):
            return directory
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in "
                              "/usr/lib/postgresql/*/bin; on Debian: apt-get install postgresql")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1 in a temporary directory.

    ``start()`` runs ``initdb`` the first time; ``stop()`` / ``start()`` stop and restart the same cluster on the same
    port (a database that goes away mid-study and comes back); ``close()`` stops it and removes the directory.
    """

    def __init__(self) -> None:
        self.bin = find_binaries()
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server "
                                          "as") from None
            self.user = "postgres"
        self.root = Path(tempfile.mkdtemp(prefix="mavrl-pg-"))  # directly under /tmp: the postgres user can reach it
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / name), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=self.root)
        if check and result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{name} failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n{log}")
        return result

    def start(self) -> None:
        """Start the server (waits until it accepts connections)."""
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.data} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (disconnect every client, write everything) or ``immediate`` (a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` (as :func:`mavrl_ppl.experiments.sweep.open_storage` takes it)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop the server (if running) and remove its directory."""
        try:
            if self.data.is_dir() and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
