"""Two production replicas behind nginx, sharing one PostgreSQL: the scale-out shape on one
machine (tests/test_replicas.py, bench/replicas.py).

Each replica is `mm-cds serve --prod` (gunicorn, 2 workers) on its own loopback port, with
the same settings file: trusted issuer (a key made here), public_base_url = the nginx URL
(the JWT audience), the shared database_url, an admin token, and a copy of the knowledge
in a temporary folder (so it can be edited and reloaded). nginx is deploy/nginx/run.py
with one --upstream per replica.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from cds_service import config

from .gunicorn import Gunicorn
from .nginx import Proxy
from .ports import free_ports
from .postgres import PostgresCluster
from .tokens import KeyPair, claims

ROOT = Path(__file__).resolve().parent.parent.parent
CLI = str(ROOT / ".venv" / "bin" / "mm-cds")
ISS = "https://ehr.example.org"
ADMIN = "replica-admin-token-0123456789"
HOOK = "/cds-services/mm-tcell-order-sign"
REQUEST = json.loads((ROOT / "examples" / "requests" / "order-sign-teclistamab.json").read_text())


@dataclass
class Replicas:
    root: Path
    cluster: PostgresCluster
    issued_card_seconds: float = 3600.0
    leeway: int = 60
    key: KeyPair = field(default_factory=lambda: KeyPair.make("ES256"))

    def start(self) -> Replicas:
        self.database_url = self.cluster.new_database()
        knowledge = self.root / "knowledge"
        self.knowledge_dirs = [knowledge / "plandefinitions", knowledge / "valuesets"]
        for name, target in zip(("plandefinitions", "valuesets"), self.knowledge_dirs, strict=True):
            shutil.copytree(config.shipped(name), target)
        nginx_port, port_a, port_b = free_ports(3)
        self.base = f"http://127.0.0.1:{nginx_port}"
        (self.root / "jwks.json").write_text(json.dumps({"keys": [self.key.public_jwk()]}))
        dirs = ", ".join(f'"{d}"' for d in self.knowledge_dirs)
        self.settings_file = self.root / "settings.toml"
        self.settings_file.write_text(f'''
public_base_url = "{self.base}"
database_url = "{self.database_url}"
knowledge_dirs = [{dirs}]
issued_card_days = {self.issued_card_seconds / 86400!r}
[security]
require_token = true
admin_token = "{ADMIN}"
leeway = {self.leeway}
[[security.issuers]]
iss = "{ISS}"
jwks_file = "jwks.json"
''')
        self.replicas: dict[str, Gunicorn] = {}
        for name, port in (("A", port_a), ("B", port_b)):
            workdir = self.root / name
            workdir.mkdir()
            command = [CLI, "serve", "--prod", "--host", "127.0.0.1", "--port", str(port)]
            self.replicas[name] = Gunicorn(workdir, command=command, port=port, workers="2",
                                           config=str(self.settings_file))
        for replica in self.replicas.values():
            replica.wait_ready()
        (self.root / "nginx").mkdir()
        self.proxy = Proxy(self.root / "nginx", upstream=[r.base.removeprefix("http://") for r in self.replicas.values()],
                           port=nginx_port)
        self.proxy.wait_ready()
        return self

    def stop(self) -> None:
        for replica in self.replicas.values():
            replica.stop()
        self.proxy.stop()

    # -- calls ---------------------------------------------------------------------------
    def token(self, path: str = HOOK, lifetime: int = 60) -> str:
        now = int(time.time())
        return self.key.sign(claims(ISS, self.base + path, iat=now, exp=now + lifetime))

    def hook_call(self, session: requests.Session, base: str | None = None, token: str | None = None,
                  lifetime: int = 60) -> requests.Response:
        body = {**REQUEST, "hookInstance": str(uuid.uuid4())}
        headers = {"Authorization": f"Bearer {token or self.token(lifetime=lifetime)}"}
        return session.post((base or self.base) + HOOK, json=body, headers=headers, timeout=30)

    def feedback(self, session: requests.Session, card: str, base: str | None = None, comment: str = "seen",
                 lifetime: int = 60) -> requests.Response:
        body = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-12-01T10:00:00Z",
                              "overrideReason": {"userComment": comment}}]}
        headers = {"Authorization": f"Bearer {self.token(HOOK + '/feedback', lifetime)}"}
        return session.post((base or self.base) + HOOK + "/feedback", json=body, headers=headers, timeout=30)

    def fingerprints(self, name: str, polls: int = 8) -> set[str]:
        """The fingerprints its workers answer /ready with (several polls: either worker may answer)."""
        return {requests.get(self.replicas[name].base + "/ready", timeout=5).json()["knowledge"]["fingerprint"]
                for _ in range(polls)}

    def reload(self, name: str) -> requests.Response:
        return requests.post(self.replicas[name].base + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"},
                             timeout=60)

    def kill(self, name: str) -> list[int]:
        """SIGKILL to the replica's gunicorn master and its workers; their pids."""
        master = self.replicas[name].process.pid
        found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True)
        pids = [master, *(int(p) for p in found.stdout.split())]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.replicas[name].process.wait(timeout=10)
        return pids

    def worker_rss_kib(self, name: str) -> list[int]:
        master = self.replicas[name].process.pid
        found = subprocess.run(["ps", "-o", "rss=", "--ppid", str(master)], capture_output=True, text=True)
        return [int(v) for v in found.stdout.split()]

    # -- the database --------------------------------------------------------------------
    def query(self, text: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(text, params)
            return list(cursor.fetchall()) if cursor.description else []

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {table}")[0][0])


class Load:
    """`threads` threads calling `work(session)` (-> a status, or an exception's name) until
    stopped or `total` calls are made; counts of what came back."""

    def __init__(self, work: Any, threads: int = 4, total: int | None = None) -> None:
        self.work, self.total = work, total
        self.statuses: Counter[str] = Counter()
        self.calls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            with self._lock:
                if self.total is not None and self.calls >= self.total:
                    return
                self.calls += 1
            try:
                outcome = str(self.work(session))
            except requests.RequestException as exc:
                outcome = type(exc).__name__
                session = requests.Session()
            with self._lock:
                self.statuses[outcome] += 1

    def stop(self) -> Counter[str]:
        self._stop.set()
        return self.join()

    def join(self) -> Counter[str]:
        """Waits for every thread (with `total`: until all calls are made)."""
        for thread in self._threads:
            thread.join()
        self.seconds = time.monotonic() - self.started
        return self.statuses

    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if not status.startswith("2"))
