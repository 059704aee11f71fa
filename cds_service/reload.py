"""Reload the knowledge without a restart: edited artifacts are served, broken ones refused.

The new KnowledgeBase is loaded and validated off the request path (a signal-started
thread, or the admin call's own thread), then swapped into the app State with one
reference assignment. A request reads `State.kb` once when it starts and keeps that
KnowledgeBase to the end, so requests in flight finish on the knowledge they began with
and none waits or fails. Knowledge that does not validate is refused: every problem is
logged and returned, and the previous knowledge keeps serving.

Triggers:
  SIGHUP                  sent to `mm-cds serve` (one process): reloads in a background thread
  POST /admin/reload      what `mm-cds reload` calls; answers with the outcome. Only from
                          loopback and never through a proxy (no X-Forwarded-For/Forwarded):
                          the operator on the host, not an EHR. A CDS client's JWT does not
                          grant it; the JWT check is not what guards it (auth_http exempts it).
Why an HTTP call for the command rather than a pid file and a signal: a signal cannot carry
the refusal back, and `mm-cds reload` must print why an edit was refused.

Under gunicorn every worker holds its own knowledge, and with preload_app the workers are
forked from the master's app, so the master is what must reload. Two gunicorn hooks
(set them in the gunicorn configuration: `when_ready = reload.gunicorn_when_ready`,
`on_reload = reload.gunicorn_on_reload`) make `kill -HUP <master>` and `mm-cds reload` reach
every worker: on SIGHUP the master reloads (or refuses, logging why) before gunicorn forks
the new workers and retires the old ones gracefully; the admin call, answered by one
worker, validates the knowledge there (reporting a refusal) and, when it is sound,
signals the master.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from . import config, knowledge, metrics
from .errors import KnowledgeError, RequestError
from .security import is_loopback

log = logging.getLogger(__name__)
bp = Blueprint("admin", __name__)
PATH = "/admin/reload"
_lock = threading.Lock()  # one reload at a time; requests never take it


class Forbidden(RequestError):
    status = 403
    code = "forbidden"


@dataclass
class ReloadResult:
    reloaded: bool
    message: str
    fingerprint: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"reloaded": self.reloaded, "message": self.message, "fingerprint": self.fingerprint,
                "problems": self.problems, "seconds": round(self.seconds, 3)}


def reload_knowledge(current: Any) -> ReloadResult:
    """Load and validate the knowledge directories again; swap it in only if it is sound.
    `current` is the app State (settings and kb)."""
    with _lock:
        started = time.perf_counter()
        settings = current.settings
        try:
            kb = knowledge.load(settings.directories, settings.canonical_base)
        except KnowledgeError as exc:
            problems = [str(p) for p in exc.problems]
            # Artifact files and elements only: no request or patient data.
            log.error("knowledge reload refused", extra={"event": "knowledge_reload_refused",
                                                         "problems": problems[:50], "count": len(problems)})
            return ReloadResult(False, f"refused, the previous knowledge keeps serving: {exc}",
                                current.kb.fingerprint, problems, time.perf_counter() - started)
        previous = current.kb
        was = previous.fingerprint
        current.kb = kb  # one reference assignment: atomic; requests in flight keep their own
        metrics.set_knowledge(kb, previous)
        del previous
        knowledge.settle()
        seconds = time.perf_counter() - started
        log.info("knowledge reloaded", extra={"event": "knowledge_reloaded", "was": was,
                                              "fingerprint": kb.fingerprint, "seconds": round(seconds, 3)})
        return ReloadResult(True, f"reloaded: {len(kb.files)} files, {len(kb.services)} services, "
                                  f"fingerprint {was} -> {kb.fingerprint}", kb.fingerprint, seconds=seconds)


def install_sighup(app: Flask) -> None:
    """SIGHUP reloads in a background thread (a signal handler must return at once)."""
    current = app.extensions["mm_cds"]

    def on_hup(signum: int, frame: Any) -> None:
        threading.Thread(target=reload_knowledge, args=(current,), name="knowledge-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)


MASTER_PID = "mm_cds_master_pid"  # app.extensions key: set in a gunicorn master (when_ready)


def gunicorn_when_ready(server: Any) -> None:
    """gunicorn hook, in the master before the workers fork: they will signal it to reload."""
    server.app.wsgi().extensions[MASTER_PID] = os.getpid()


def gunicorn_on_reload(server: Any) -> None:
    """gunicorn hook, in the master on SIGHUP before the new workers fork from its app."""
    reload_knowledge(server.app.wsgi().extensions["mm_cds"])


def _validate_only(current: Any) -> list[str]:
    """The problems of the knowledge on disk (empty: it loads), without swapping anything."""
    try:
        knowledge.load(current.settings.directories, current.settings.canonical_base)
    except KnowledgeError as exc:
        return [str(p) for p in exc.problems]
    return []


@bp.post(PATH)
def reload_endpoint() -> Response:
    forwarded = any(h in request.headers for h in ("X-Forwarded-For", "Forwarded", "X-Real-IP"))
    if forwarded or not is_loopback(request.remote_addr or ""):
        raise Forbidden("reload is accepted only from the service's own host (loopback, not through a proxy)")
    from .app import state

    current, master = state(), current_app.extensions.get(MASTER_PID)
    if master:  # one worker of several answers: validate here, then the master reloads them all
        problems = _validate_only(current)
        result = ReloadResult(not problems, "refused" if problems else
                              f"valid: gunicorn master {master} signalled; its workers are replaced gracefully",
                              current.kb.fingerprint, problems)
        if not problems:
            os.kill(master, signal.SIGHUP)
    else:
        result = reload_knowledge(current)
    if result.reloaded:
        return jsonify(result.as_dict())
    issues = [{"severity": "error", "code": "invalid", "diagnostics": p} for p in result.problems]
    body = {"resourceType": "OperationOutcome", "issue": issues or [
        {"severity": "error", "code": "invalid", "diagnostics": result.message}]}
    response = jsonify(body)
    response.status_code = 422
    return response


# -- mm-cds reload ----------------------------------------------------------------------------


def register_cli(sub: argparse._SubParsersAction) -> dict[str, Any]:
    cmd = sub.add_parser("reload", help="load the edited knowledge into the running service (on this host)")
    cmd.add_argument("--url", help="the service's base URL (default: http://127.0.0.1:<port setting>)")
    return {"reload": _cli}


def _cli(args: argparse.Namespace) -> int:
    settings = config.load()
    host = settings.host if is_loopback(settings.host) else "127.0.0.1"
    base = (args.url or f"http://{host}:{settings.port}").rstrip("/")
    try:
        response = requests.post(base + PATH, timeout=120)
    except requests.RequestException as exc:
        print(f"mm-cds reload: cannot reach the service at {base}: {type(exc).__name__}", file=sys.stderr)
        return 2
    body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
    if response.status_code == 200:
        print(body.get("message", "reloaded"))
        return 0
    if response.status_code == 422:
        print("refused: the knowledge does not validate; the previous knowledge keeps serving:", file=sys.stderr)
        for issue in body.get("issue", []):
            print(f"  - {issue.get('diagnostics')}", file=sys.stderr)
        return 1
    diagnostics = "; ".join(i.get("diagnostics", "") for i in body.get("issue", [])) or response.text[:300]
    print(f"mm-cds reload: HTTP {response.status_code}: {diagnostics}", file=sys.stderr)
    return 2
