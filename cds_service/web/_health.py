"""Liveness and readiness, for load balancers and orchestrators: unauthenticated and cheap
(no I/O, no evaluation), so a probe every second costs nothing.

    GET /health   200 {"status": "ok"} while the process answers at all
    GET /ready    200 with the knowledge fingerprint, counts and load time when there is
                  something to serve; 503 otherwise (e.g. knowledge_dirs hold no
                  PlanDefinition), so the replica gets no traffic
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from cds_service.web._state import state

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
    return jsonify({"status": "ready", "knowledge": knowledge}), 200
