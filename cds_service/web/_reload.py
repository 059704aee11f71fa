"""POST /admin/reload, SIGHUP for `mm-cds serve`, and the gunicorn hooks that make a
reload reach every worker (see cds_service.ops for how a reload is done)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from cds_service import ops
from cds_service.errors import Forbidden
from cds_service.security import is_loopback
from cds_service.web._state import state, state_of

bp = Blueprint("admin", __name__)
PATH = "/admin/reload"


def install_sighup(app: Flask) -> None:
    """SIGHUP reloads in a background thread (a signal handler must return at once)."""
    current = state_of(app)

    def on_hup(signum: int, frame: Any) -> None:
        threading.Thread(target=ops.reload_knowledge, args=(current,), name="knowledge-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)


def gunicorn_when_ready(server: Any) -> None:
    """gunicorn hook, in the master before the workers fork: they will signal it to reload."""
    state_of(server.app.wsgi()).master_pid = os.getpid()


def gunicorn_on_reload(server: Any) -> None:
    """gunicorn hook, in the master on SIGHUP before the new workers fork from its app."""
    ops.reload_knowledge(state_of(server.app.wsgi()))


@bp.post(PATH)
def reload_endpoint() -> Response:
    forwarded = any(h in request.headers for h in ("X-Forwarded-For", "Forwarded", "X-Real-IP"))
    if forwarded or not is_loopback(request.remote_addr or ""):
        raise Forbidden("reload is accepted only from the service's own host (loopback, not through a proxy)")
    current = state()
    master = current.master_pid
    if master:  # one worker of several answers: validate here, then the master reloads them all
        problems = ops.validate_only(current)
        result = ops.ReloadResult(not problems, "refused" if problems else
                              f"valid: gunicorn master {master} signalled; its workers are replaced gracefully",
                              current.kb.fingerprint, problems)
        if not problems:
            os.kill(master, signal.SIGHUP)
    else:
        result = ops.reload_knowledge(current)
    if result.reloaded:
        return jsonify(result.as_dict())
    issues = [{"severity": "error", "code": "invalid", "diagnostics": p} for p in result.problems]
    body = {"resourceType": "OperationOutcome", "issue": issues or [
        {"severity": "error", "code": "invalid", "diagnostics": result.message}]}
    response = jsonify(body)
    response.status_code = 422
    return response
