"""Reload without restart: an edit is served, a broken edit is refused, no request fails.

Each test copies the shipped knowledge to a temporary folder, serves it on loopback,
keeps a thread calling the service over HTTP while the copy is edited and reloaded, and
counts every answer.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from cds_service import cli, create_app, scenarios, web
from cds_service.service import scenario_request

from .support.loopback import serving
from .support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
TITLE = "Consider CAR-T cell therapy before a bispecific antibody"
EDITED = "Consider CAR-T cell therapy before a bispecific (edited by the site)"
BROKEN_FROM = '"expression": "%bsabTriggers.exists()"'
BROKEN_TO = '"expression": "%bsabTriggers..exists()"'


@pytest.fixture()
def knowledge_copy(tmp_path) -> tuple[Path, Path]:
    dirs = (tmp_path / "plandefinitions", tmp_path / "valuesets")
    for target in dirs:
        shutil.copytree(ROOT / target.name, target)
    return dirs


def edit(plan: Path, old: str, new: str) -> None:
    text = plan.read_text()
    assert old in text, f"{old!r} is not in {plan.name}: the test needs updating"
    plan.write_text(text.replace(old, new, 1))


@dataclass
class Hammer:
    """Calls order-sign in a loop (bounded in count and time) and records every answer."""

    url: str
    body: dict
    answers: list[tuple[float, int, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline and len(self.answers) < 20000:
            started = time.monotonic()
            try:
                response = session.post(self.url, json=self.body, timeout=30)
                title = next((c["summary"] for c in response.json().get("cards", [])
                              if c["source"]["topic"]["code"] == "SEQ-1"), None) if response.ok else None
                self.answers.append((started, response.status_code, title))
            except requests.RequestException as exc:
                self.answers.append((started, 0, type(exc).__name__))

    def wait_for(self, title: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers and self.answers[-1][2] == title:
                return
            time.sleep(0.05)
        raise AssertionError(f"never served {title!r}; last answer {self.answers[-1:]}")

    def during(self, start: float, end: float) -> list[tuple[float, int, str | None]]:
        return [a for a in self.answers if start <= a[0] <= end]

    def finish(self) -> list[tuple[float, int, str | None]]:
        self.stop.set()
        self.thread.join(timeout=40)
        return self.answers


def order_sign_body(kb) -> dict:
    scenario = scenarios.find(scenarios.DEFAULT_FOLDER / "seq-1.yaml", "SEQ-1 fires for a first teclistamab order")
    moved = scenario.as_of(dt.datetime.now(dt.timezone.utc).date())  # the service runs on a real clock
    return scenario_request(moved, kb.services["mm-tcell-order-sign"].prefetch)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def mm_cds_reload(capsys, base: str) -> Done:
    """`mm-cds reload --url BASE` in this process (it is an HTTP client: its own process
    would add nothing but the interpreter's start)."""
    capsys.readouterr()
    status = cli.main(["reload", "--url", base])
    out, err = capsys.readouterr()
    return Done(status, out, err)


@pytest.mark.slow
def test_reload_command_serves_the_edit_refuses_a_broken_one_and_drops_nothing(knowledge_copy, caplog, capsys):
    plan_dir, vs_dir = knowledge_copy
    app = create_app({"knowledge_dirs": (str(plan_dir), str(vs_dir)), "site_dirs": ()})
    with serving(app) as base:
        hammer = Hammer(f"{base}/cds-services/mm-tcell-order-sign", order_sign_body(web.state_of(app).kb))
        try:
            hammer.wait_for(TITLE)
            edit(plan_dir / "PlanDefinition-mm-tcell.json", TITLE, EDITED)
            started = time.monotonic()
            done = mm_cds_reload(capsys, base)
            reloaded = time.monotonic()
            assert done.returncode == 0 and done.stdout.startswith("reloaded: "), done
            hammer.wait_for(EDITED)

            edit(plan_dir / "PlanDefinition-mm-tcell.json", BROKEN_FROM, BROKEN_TO)
            refused_at = time.monotonic()
            done = mm_cds_reload(capsys, base)
            refused_done = time.monotonic()
            assert done.returncode == 1
            err = done.stderr
            assert "refused: the knowledge does not validate; the previous knowledge keeps serving" in err
            assert "PlanDefinition-mm-tcell.json: PlanDefinition/mm-tcell:" in err and "does not parse" in err
            time.sleep(0.5)
            count_after = len(hammer.answers)
            hammer.wait_for(EDITED)  # the previous (edited, valid) knowledge keeps serving
            answers = hammer.finish()
        finally:
            hammer.stop.set()
    assert [a for a in answers if a[1] != 200] == []
    assert len(hammer.during(started, reloaded)) > 0 and len(hammer.during(refused_at, refused_done)) > 0
    assert len(answers) > count_after
    refused = [r for r in caplog.records if getattr(r, "event", "") == "knowledge_reload_refused"]
    assert refused and any("does not parse" in p for p in refused[0].problems)
    print(f"\nreload command: {len(answers)} requests, {len(hammer.during(started, reloaded))} during the reload, "
          f"{len(hammer.during(refused_at, refused_done))} during the refused reload, "
          f"{sum(a[1] != 200 for a in answers)} not 200")


def test_reload_is_refused_from_a_proxy(client):
    response = client.post("/admin/reload", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 403
    assert "only from the service's own host" in response.get_json()["issue"][0]["diagnostics"]
    remote = client.post("/admin/reload", environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert remote.status_code == 403


@pytest.mark.slow
def test_sighup_reloads_mm_cds_serve_without_dropping_a_request(knowledge_copy, tmp_path, kb):
    plan_dir, vs_dir = knowledge_copy
    port = free_port()
    env = {**os.environ, "MM_CDS_KNOWLEDGE_DIRS": f"{plan_dir}{os.pathsep}{vs_dir}", "MM_CDS_SITE_DIRS": "",
           "MM_CDS_PORT": str(port), "MM_CDS_HOST": "127.0.0.1", "MM_CDS_DATA_DIR": str(tmp_path / "data")}
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "cds_service", "serve"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    hammer = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/cds-services", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        hammer = Hammer(f"{base}/cds-services/mm-tcell-order-sign", order_sign_body(kb))
        hammer.wait_for(TITLE)
        edit(plan_dir / "PlanDefinition-mm-tcell.json", TITLE, EDITED)
        process.send_signal(signal.SIGHUP)
        hammer.wait_for(EDITED)
        edit(plan_dir / "PlanDefinition-mm-tcell.json", BROKEN_FROM, BROKEN_TO)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "knowledge_reload_refused" not in (tmp_path / "serve.log").read_text():
            assert time.monotonic() < deadline, "the broken edit was not refused in the log"
            time.sleep(0.1)
        served = len(hammer.answers)
        hammer.wait_for(EDITED)
        time.sleep(0.3)
        answers = hammer.finish()
        still_running = process.poll() is None  # two SIGHUPs reloaded it; neither stopped it
    finally:
        if hammer:
            hammer.stop.set()
        process.terminate()
        process.wait(timeout=30)
    assert still_running, (tmp_path / "serve.log").read_text()
    assert process.returncode == -signal.SIGTERM  # it was stopped by our SIGTERM, not by a SIGHUP or a crash
    assert [a for a in answers if a[1] != 200] == []
    assert len(answers) > served
    text = (tmp_path / "serve.log").read_text()
    assert f"serving 3 CDS services on http://127.0.0.1:{port}/cds-services" in text
    events = [json.loads(line).get("event") for line in text.splitlines() if line.startswith("{")]
    assert events.count("knowledge_reloaded") == 1 and events.count("knowledge_reload_refused") == 1, events
    assert "does not parse" in text
    print(f"\nSIGHUP: {len(answers)} requests, {sum(a[1] != 200 for a in answers)} not 200")


class _GunicornServer:
    """What gunicorn's hooks are given: `server.app.wsgi()` is the (preloaded) Flask app."""

    def __init__(self, app):
        self.app = type("Application", (), {"wsgi": staticmethod(lambda: app)})()


@pytest.mark.slow
def test_under_gunicorn_the_master_reloads_and_the_admin_call_signals_it(knowledge_copy, tmp_path):
    plan_dir, vs_dir = knowledge_copy
    app = create_app({"knowledge_dirs": (str(plan_dir), str(vs_dir)), "site_dirs": ()})
    server = _GunicornServer(app)
    # a stand-in master: a process that reports each SIGHUP it receives
    master = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                               "signal.signal(signal.SIGHUP, lambda *a: print('HUP', flush=True))\n"
                               "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert master.stdout.readline().strip() == "ready"
        web.gunicorn_when_ready(server)
        web.state_of(app).master_pid = master.pid  # as if this process were the worker of that master
        client = app.test_client()
        before = web.state_of(app).kb.fingerprint
        edit(plan_dir / "PlanDefinition-mm-tcell.json", TITLE, EDITED)
        answer = client.post("/admin/reload")
        assert answer.status_code == 200 and f"gunicorn master {master.pid} signalled" in answer.get_json()["message"]
        assert master.stdout.readline().strip() == "HUP"
        assert web.state_of(app).kb.fingerprint == before  # the worker does not swap: the master does
        web.gunicorn_on_reload(server)  # gunicorn calls this in the master on SIGHUP, before forking
        assert web.state_of(app).kb.fingerprint != before
        edit(plan_dir / "PlanDefinition-mm-tcell.json", BROKEN_FROM, BROKEN_TO)
        refused = client.post("/admin/reload")
        assert refused.status_code == 422 and "does not parse" in json.dumps(refused.get_json())
    finally:
        master.kill()
        master.wait()
        web.state_of(app).feedback.close()


@pytest.mark.gunicorn
def test_reload_under_real_gunicorn_reaches_every_worker_and_drops_nothing(knowledge_copy, tmp_path, kb, capsys):
    """`mm-cds reload` against `mm-cds serve --prod`: the master reloads, gunicorn replaces the
    workers, every worker then serves the edit; a broken edit is refused and changes nothing."""
    from .support.gunicorn import CLI, Gunicorn

    plan_dir, vs_dir = knowledge_copy
    server = Gunicorn(tmp_path, CLI, knowledge_dirs=f"{plan_dir}:{vs_dir}", site_dirs="", workers="2")
    server.wait_ready()
    hammer = Hammer(f"{server.base}/cds-services/mm-tcell-order-sign", order_sign_body(kb))
    try:
        hammer.wait_for(TITLE)
        edit(plan_dir / "PlanDefinition-mm-tcell.json", TITLE, EDITED)
        done = mm_cds_reload(capsys, server.base)
        assert done.returncode == 0, done.stdout + done.stderr
        hammer.wait_for(EDITED)
        seen = {requests.post(hammer.url, json=hammer.body, timeout=30).json()["cards"][0]["summary"] for _ in range(12)}
        assert seen == {EDITED}, f"some worker still serves the old knowledge: {seen}"
        edit(plan_dir / "PlanDefinition-mm-tcell.json", BROKEN_FROM, BROKEN_TO)
        refused = mm_cds_reload(capsys, server.base)
        assert refused.returncode != 0 and "does not parse" in refused.stdout + refused.stderr
        time.sleep(1)
        assert hammer.answers[-1][2] == EDITED
    finally:
        answers = hammer.finish()
        server.stop()
    assert answers and all(status == 200 for _, status, _ in answers), [a for a in answers if a[1] != 200][:5]
