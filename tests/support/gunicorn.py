"""The production server, really started: gunicorn with cds_service/gunicorn_conf.py as a
subprocess on a free loopback port, its stdout and stderr kept in files for the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from .ports import free_port

GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:cds_service.gunicorn_conf", "cds_service.wsgi:app"]
CLI = [sys.executable, "-m", "cds_service", "serve", "--prod"]  # execs the line above
START_SECONDS = 60  # imports and the knowledge load, on a busy 2-core CI machine


class Gunicorn:
    def __init__(self, workdir: Path, command: list[str] = GUNICORN, port: int | None = None, **settings: str) -> None:
        """`settings` become MM_CDS_* variables (e.g. workers="2"); TMPDIR is `workdir`,
        so the private metrics directory can be seen, and seen removed; the feedback
        database is in `workdir` too unless `data_dir` is given."""
        self.workdir = workdir
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MM_CDS_", "PROMETHEUS_"))}
        env["MM_CDS_DATA_DIR"] = str(workdir / "data")
        # The shipped knowledge does not meet the go-live gate (no talquetamab or linvoseltamab
        # code): the production server would refuse to start. These tests accept that with the
        # documented setting, explicitly; a test of the refusal passes accept_unverified_treatment_codes="".
        env["MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES"] = "all"
        env.setdefault("MM_CDS_SERVICE_SECRET", "test-secret-0123456789abcdef")  # the production server needs one
        env.update({f"MM_CDS_{k.upper()}": v for k, v in settings.items()})
        env.update(MM_CDS_HOST="127.0.0.1", MM_CDS_PORT=str(self.port), TMPDIR=str(workdir), PYTHONUNBUFFERED="1")
        self.stdout_path, self.stderr_path = workdir / "stdout", workdir / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"gunicorn did not answer /health within {START_SECONDS}s:\n{self.output()}")

    def wait_exit(self, seconds: float = START_SECONDS) -> int:
        return self.process.wait(timeout=seconds)

    def stop(self) -> int:
        """SIGTERM (graceful: in-flight requests finish), then the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        return [line for line in self.output().splitlines() if line.strip()]

    def log_entries(self) -> list[dict]:
        """Every line parsed as JSON (json.loads raises on a line that is not)."""
        return [json.loads(line) for line in self.log_lines()]

    def metrics_dirs(self) -> list[Path]:
        return sorted(self.workdir.glob("mm-cds-metrics-*"))
