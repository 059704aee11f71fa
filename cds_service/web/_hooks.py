"""CDS Hooks 2.0 endpoints: discovery and service calls."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import Blueprint, Response, current_app, request

from cds_service.errors import InvalidRequest, PayloadTooLarge, ServiceNotFound
from cds_service.feedback import CallKeys, card_rows
from cds_service.security import check_fhir_server, development_caller
from cds_service.service import Repeat, call
from cds_service.web import _jsonio as jsonio
from cds_service.web._auth import caller, may_explain
from cds_service.web._request import record
from cds_service.web._state import State, state

bp = Blueprint("cds_hooks", __name__)
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
log = logging.getLogger("cds_service.requests")


@bp.before_app_request
def _start_clock() -> None:
    record()  # made now: its clock starts with the request


@bp.after_app_request
def _log_request(response: Response) -> Response:
    current = record()
    entry: dict[str, Any] = {
        "event": "request",
        "method": request.method,
        "endpoint": request.url_rule.rule if request.url_rule else "(none)",
        "status": response.status_code,
        "ms": round(current.seconds() * 1000, 2),
        **current.log_fields(),
    }
    log.info("request", extra=entry)
    return response


@bp.get("/cds-services")
def discovery() -> Response:
    services = state().kb.services.values()
    return jsonio.response({"services": [s.discovery() for s in services]})


def read_json() -> Any:
    return parse_body(read_body())


def read_body() -> bytes:
    raw = request.get_data(cache=False)
    _refuse_truncated(raw)
    return raw


def parse_body(raw: bytes) -> Any:
    try:
        return jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidRequest(f"(body): not valid JSON{where}", field="(body)") from None


def _refuse_truncated(raw: bytes) -> None:
    """413 for a body sent without Content-Length (chunked) that is over the limit.

    Werkzeug stops such a stream at MAX_CONTENT_LENGTH and returns what it read without
    saying so; parsing that would answer 400, or accept a body cut short. The server
    terminates the stream (wsgi.input_terminated), so one more byte can be asked for.
    """
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(raw) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise PayloadTooLarge(f"request body larger than {limit} bytes")


def _explain_requested() -> bool:
    flag = request.args.get("explain") or request.headers.get("X-CDS-Explain") or ""
    return flag.strip().lower() in ("1", "true", "yes")


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    current = state()
    raw = read_body()
    with current.large_calls.admit(len(raw)):  # a large body: after this worker's other large calls
        return _answer(current, service_id, parse_body(raw))


def _answer(current: State, service_id: str, body: Any) -> Response:
    kb = current.kb  # read once: a reload swaps State.kb, this call keeps the one it started with
    hook = body.get("hook") if isinstance(body, dict) else None
    service = kb.service_for(service_id, hook)
    if service is None:
        raise ServiceNotFound(f"no CDS service '{service_id}'" + (f" for hook {hook}" if hook else ""))
    current_record = record()
    current_record.service, current_record.hook = service.id, service.hook
    if isinstance(body, dict) and isinstance(body.get("hookInstance"), str):
        # Logged only when it looks like the identifier it should be: it is the caller's text.
        current_record.hook_instance = body["hookInstance"] if _IDENTIFIER.fullmatch(body["hookInstance"]) else "(not an identifier)"
    if isinstance(body, dict):
        # Before anything is fetched: the service would send GETs there with the caller's token.
        config = current.security.config
        check_fhir_server(config, caller(), body.get("fhirServer"),
                          development_caller(config, request.remote_addr or "", request.headers))
    explain = current.settings.explain_enabled and _explain_requested() and may_explain()
    now = current.clock()
    keys = call_keys(body)
    repeat = None
    if keys is not None and current.history is not None and current.settings.repeat_suppression:
        settings = current.settings
        repeat = Repeat(hook=keys.hook, patient=keys.patient, user=keys.user, encounter=keys.encounter,
                        trigger_orders=keys.trigger_orders, history=current.history.rows,
                        scope=settings.suppress_scope, ignored_hours=settings.ignored_repeat_hours,
                        order_hours=settings.order_repeat_hours)
    outcome = call(kb, service, body, now, current.fetch, explain, repeat)
    current_record.suppressed = outcome.suppressed or None
    current_record.suppression = "store unavailable" if outcome.suppression_note else None
    # Per recommendation: a bundled card counts for each member it lists (metrics, the log).
    current_record.codes = [code for card in outcome.issued for code in card.members or (card.code,)]
    current_record.dropped = outcome.dropped
    current_record.fetches = outcome.fetches
    # Remembered off the request path (background writer) so feedback can be linked.
    current.feedback.record_cards(card_rows(service.id, body["hookInstance"], outcome.issued, now, keys))
    return jsonio.response(outcome.response)


def call_keys(body: dict[str, Any]) -> CallKeys | None:
    """The call's patient, user, encounter and trigger orders as keyed hashes (B-0.7); the
    identifiers themselves are neither stored nor logged. Computed before the request is
    checked (the call then refuses a malformed body with a 400), so nothing here trusts its shape."""
    keys = state().keys
    context = body.get("context") if isinstance(body, dict) else None
    if keys is None or not isinstance(context, dict) or not isinstance(context.get("patientId"), str):
        return None
    server = body.get("fhirServer") if isinstance(body.get("fhirServer"), str) else None
    hook = body.get("hook")
    if not isinstance(hook, str):
        return None
    triggers: list[str] = []
    if hook == "order-select" and isinstance(context.get("selections"), list):
        triggers = [s for s in context["selections"] if isinstance(s, str)]
    elif hook == "order-sign" and isinstance(context.get("draftOrders"), dict):
        entries = context["draftOrders"].get("entry")
        triggers = [f"{r.get('resourceType')}/{r.get('id')}" for e in (entries if isinstance(entries, list) else [])
                    if isinstance(e, dict) and isinstance(r := e.get("resource"), dict)]
    return CallKeys(hook=hook, patient=keys.patient(server, context["patientId"]),
                    user=keys.user(str(context.get("userId") or "")),
                    encounter=keys.encounter(server, context.get("encounterId")),
                    trigger_orders=tuple(sorted(keys.order(t) for t in triggers)))
