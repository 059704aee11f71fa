"""CDS Hooks 2.0 endpoints: discovery and service calls."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from . import hooks
from .app import state
from .errors import InvalidRequest, ServiceNotFound

bp = Blueprint("cds_hooks", __name__)
log = logging.getLogger("cds_service.requests")


@bp.before_app_request
def _start_clock() -> None:
    g.started = time.perf_counter()


@bp.after_app_request
def _log_request(response: Response) -> Response:
    entry: dict[str, Any] = {
        "event": "request",
        "method": request.method,
        "endpoint": request.url_rule.rule if request.url_rule else "(none)",
        "status": response.status_code,
        "ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
    }
    for key in ("service", "hook", "hook_instance", "codes", "fetched", "error_field"):
        if key in g:
            entry[key] = g.get(key)
    log.info("request", extra=entry)
    return response


@bp.get("/cds-services")
def discovery() -> Response:
    services = state().kb.services.values()
    return jsonify({"services": [s.discovery() for s in services]})


def read_json() -> Any:
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidRequest(f"(body): not valid JSON{where}", field="(body)") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _explain_requested() -> bool:
    flag = request.args.get("explain") or request.headers.get("X-CDS-Explain") or ""
    return flag.strip().lower() in ("1", "true", "yes")


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    current = state()
    body = read_json()
    hook = body.get("hook") if isinstance(body, dict) else None
    service = current.kb.service_for(service_id, hook)
    if service is None:
        raise ServiceNotFound(f"no CDS service '{service_id}'" + (f" for hook {hook}" if hook else ""))
    g.service, g.hook = service.id, service.hook
    if isinstance(body, dict) and isinstance(body.get("hookInstance"), str):
        g.hook_instance = body["hookInstance"][:64]
    explain = current.settings.explain_enabled and _explain_requested()
    outcome = hooks.call(current.kb, service, body, current.clock(), current.fetch, explain)
    g.codes = [card.code for card in outcome.issued]
    g.dropped = outcome.dropped
    return jsonify(outcome.response)
