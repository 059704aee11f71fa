"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, started on
a free loopback port, removed at the end.

The binaries are found on PATH or in Debian's /usr/lib/postgresql/<version>/bin (where
`apt-get install postgresql` puts them; .ci/run installs them when missing). initdb and
postgres refuse to run as root, so as root the cluster runs as the `postgres` user (or
`nobody`) through runuser.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from .ports import free_port

USER = "mmcds"


def require_binaries() -> Path:
    """The PostgreSQL binaries' folder; without them a developer's run skips, CI fails."""
    bindir = binaries()
    if bindir is None:
        message = "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs them)", pytrace=False)
        pytest.skip(message)
    return bindir


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version, reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _version(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


class PostgresCluster:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        # /tmp, whatever TMPDIR says: the unprivileged user must reach it, and the server's
        # socket path must stay under the 107-character limit.
        self.root = Path(tempfile.mkdtemp(prefix="mm-cds-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.owner = _unprivileged_user() if os.geteuid() == 0 else None
        if self.owner is not None:
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner.pw_name, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}")

    def start(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "--encoding=UTF8",
                  "--no-sync", "--no-instructions")
        # Loopback TCP only, socket in our folder; durability off: a test cluster is disposable.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-w", "-t", "60", "start")
        return self

    def _options(self) -> str:
        return (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")

    def pause(self) -> None:
        """An outage: the server stops (connections refused), its data kept for resume().
        A fast shutdown: what it committed is kept (the cluster runs synchronous_commit=off)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a fresh, empty place for tables: a schema of its own, first on the
        search path (CREATE DATABASE costs half a second, a schema nothing)."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return self.url() + f"?options=-csearch_path%3D{name}"


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")
