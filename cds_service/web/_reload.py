"""POST /admin/reload, SIGHUP for `mm-cds serve`, and the gunicorn hooks that make a
reload reach every worker (see cds_service.ops for how a reload is done)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from cds_service import ops
from cds_service.errors import Forbidden, Unauthenticated
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


def _check_credential(current: Any) -> None:
    """With `admin_token` in [security]: `Authorization: Bearer <admin_token>` is required.
    Without it: only the development server (bound to loopback, no trusted issuer) reloads;
    any other configuration refuses until an admin_token is set."""
    configured = ops.admin_token(current.settings)
    if configured:
        scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not ops.admin_token_matches(configured, presented.strip()):
            raise Unauthenticated("reload needs the admin token: Authorization: Bearer <security.admin_token>")
        return
    if current.security.config.issuers or not is_loopback(current.settings.host):
        raise Forbidden("reload is disabled: set security.admin_token (this service trusts JWT issuers "
                        "or is not bound to loopback, so it is not a development server)")


@bp.post(PATH)
def reload_endpoint() -> Response:
    forwarded = any(h in request.headers for h in ("X-Forwarded-For", "Forwarded", "X-Real-IP"))
    if forwarded or not is_loopback(request.remote_addr or ""):
        raise Forbidden("reload is accepted only from the service's own host (loopback, not through a proxy)")
    current = state()
    _check_credential(current)
    master = current.master_pid

    def run() -> ops.ReloadResult:
        if master:  # one worker of several answers: validate here, then the master reloads them all
            problems = ops.validate_only(current)
            result = ops.ReloadResult(not problems, "refused" if problems else
                                      f"valid: gunicorn master {master} signalled; its workers are replaced gracefully",
                                      current.kb.fingerprint, problems)
            if not problems:
                os.kill(master, signal.SIGHUP)
            return result
        return ops.reload_knowledge(current)

    # One reload per instance: a burst of requests (any worker) shares the outcome of one.
    key = str(master) if master else f"{os.getpid()}-{id(current)}"
    result = ops.coalesced(key, current.settings.directories, run)
    if result.reloaded:
        return jsonify(result.as_dict())
    issues = [{"severity": "error", "code": "invalid", "diagnostics": p} for p in result.problems]
    body = {"resourceType": "OperationOutcome", "issue": issues or [
        {"severity": "error", "code": "invalid", "diagnostics": result.message}]}
    response = jsonify(body)
    response.status_code = 422
    return response
