"""The production front, really started: deploy/nginx/run.py (nginx in front of gunicorn,
through the `mm-cds serve --prod` CLI) as a subprocess on free loopback ports. The same
launcher `make serve-proxy` runs: one code path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .ports import free_ports

ROOT = Path(__file__).resolve().parent.parent.parent
LAUNCHER = ROOT / "deploy" / "nginx" / "run.py"
NGINX = "/usr/sbin/nginx"
START_SECONDS = 90


def nginx_missing() -> str | None:
    """Why the proxy cannot run here, or None."""
    return None if os.access(NGINX, os.X_OK) else f"{NGINX} missing (apt-get install nginx; .ci/run does)"


def require_nginx() -> None:
    """Skip on a developer's machine without nginx; in CI (CI=true) a missing nginx fails."""
    missing = nginx_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)


class Proxy:
    """deploy/nginx/run.py on a free public port, gunicorn on a free internal one.

    `settings` become MM_CDS_* variables (e.g. workers="2"); `upstream` ("host:port", or a
    list of them: a load balancer) starts nginx only, in front of those addresses; `port`
    is the public port (default: a free one)."""

    def __init__(self, workdir: Path, upstream: str | list[str] | None = None, port: int | None = None,
                 **settings: str) -> None:
        self.workdir = workdir
        self.port, self.internal_port = free_ports(2)
        self.port = port or self.port
        self.base = f"http://127.0.0.1:{self.port}"
        self.internal = f"http://127.0.0.1:{self.internal_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MM_CDS_", "PROMETHEUS_", "GUNICORN_"))}
        env["MM_CDS_DATA_DIR"] = str(workdir / "data")
        env["MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES"] = "all"  # the go-live gate, as in gunicorn.py
        env.setdefault("MM_CDS_SERVICE_SECRET", "test-secret-0123456789abcdef")  # the production server needs one
        env.update({f"MM_CDS_{k.upper()}": v for k, v in settings.items()})
        env.update(TMPDIR=str(workdir), PYTHONUNBUFFERED="1")
        self.run_dir = workdir / "run"
        command = [sys.executable, str(LAUNCHER), "--host", "127.0.0.1", "--port", str(self.port),
                   "--internal-port", str(self.internal_port), "--run-dir", str(self.run_dir)]
        for address in [upstream] if isinstance(upstream, str) else upstream or []:
            command += ["--upstream", address]
        self.stdout_path, self.stderr_path = workdir / "stdout", workdir / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def wait_ready(self, path: str = "/health", status: int = 200) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"run.py exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(self.base + path, timeout=2).status_code == status:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the proxy did not answer {path} within {START_SECONDS}s:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM to the launcher (it stops nginx, then gunicorn), then its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
