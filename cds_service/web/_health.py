"""Liveness and readiness, for load balancers and orchestrators: unauthenticated and cheap
(no I/O, no evaluation), so a probe every second costs nothing.

    GET /health   200 {"status": "ok"} while the process answers at all
    GET /ready    200 with the knowledge fingerprint, counts and load time when there is
                  something to serve; 503 otherwise (e.g. knowledge_dirs hold no
                  PlanDefinition), so the replica gets no traffic, or while the go-live gate
                  is not met (a treatment value set with no code or only unverified codes,
                  not accepted by accept_unverified_treatment_codes); `goLive` lists the open
                  and the accepted value sets

check_go_live() applies the gate at start-up: the production server refuses to start,
the development server logs the same list at WARNING; accepted items are logged at
CRITICAL (an explicit site decision must never pass unnoticed).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from cds_service import config
from cds_service.errors import ConfigurationError
from cds_service.knowledge import GateStatus, KnowledgeBase, gate_status, gate_text, unarmed
from cds_service.web._state import state

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> tuple[Response, int]:
    current = state()
    kb = current.kb
    knowledge = {
        "fingerprint": kb.fingerprint,
        "services": len(kb.services),
        "files": len(kb.files),
        "loadSeconds": round(kb.load_seconds, 3),
        "loadedAt": kb.loaded_at.isoformat(timespec="seconds"),
    }
    if not kb.services:
        return jsonify({"status": "unavailable", "reason": "no CDS service is loaded: the knowledge "
                        "directories hold no PlanDefinition", "knowledge": knowledge}), 503
    try:
        gate = _gate(kb, current.settings.accept_unverified_treatment_codes)
    except ConfigurationError as exc:  # a reload removed a value set the setting names
        return jsonify({"status": "unavailable", "reason": str(exc), "knowledge": knowledge}), 503
    go_live = {"met": gate.met, "open": [i.as_json() for i in gate.open],
               "accepted": [i.as_json() for i in gate.accepted]}
    knowledge["notArmed"] = [r.as_json() for r in unarmed(kb.plans.values())]  # D-11: reported, never 503
    if not gate.met:
        return jsonify({"status": "unavailable", "reason": "go-live gate not met: treatment value sets with no "
                        "code or only unverified codes (see goLive.open; docs/terminology.md)",
                        "goLive": go_live, "knowledge": knowledge}), 503
    return jsonify({"status": "ready", "goLive": go_live, "knowledge": knowledge}), 200


_last: tuple[tuple[str, tuple[str, ...]], GateStatus] | None = None


def _gate(kb: KnowledgeBase, accept: tuple[str, ...]) -> GateStatus:
    """The gate of this knowledge, computed once per fingerprint: probes call /ready every second."""
    global _last
    key = (kb.fingerprint, tuple(accept))
    if _last is None or _last[0] != key:
        _last = (key, gate_status(kb, accept))
    return _last[1]


def check_go_live(settings: config.Settings, kb: KnowledgeBase, production: bool) -> GateStatus:
    """Refuse (production) or warn (development) while the gate is open; a bad setting raises."""
    gate = gate_status(kb, settings.accept_unverified_treatment_codes)
    names = [i.name for i in gate.open]
    for row in unarmed(kb.plans.values()):  # D-11: listed at start-up
        log.warning(f"rule {row.line()}", extra={"event": "rule_not_armed", "code": row.code, "partial": row.partial})
    if gate.accepted:
        log.critical("go-live gate: treatment value sets accepted without a verified code by "
                     "accept_unverified_treatment_codes: " + "; ".join(i.line() for i in gate.accepted),
                     extra={"event": "go_live_accepted", "valueSets": [i.name for i in gate.accepted]})
    if gate.open and production:
        raise ConfigurationError("go-live gate not met, the production server does not start:\n" + gate_text(gate))
    if gate.open:
        log.warning("go-live gate not met (development server: starting anyway; /ready answers 503): "
                    + "; ".join(i.line() for i in gate.open), extra={"event": "go_live_open", "valueSets": names})
    return gate
