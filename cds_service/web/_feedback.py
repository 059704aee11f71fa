"""POST /cds-services/{id}/feedback (CDS Hooks 2.0 "Feedback"), and remembering issued
cards so feedback can be linked to the recommendation and PlanDefinition behind them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Blueprint, Response, jsonify

from cds_service import service
from cds_service.errors import InvalidRequest, ServiceNotFound
from cds_service.feedback import feedback_rows
from cds_service.knowledge import KnowledgeBase
from cds_service.web._hooks import read_json
from cds_service.web._request import record
from cds_service.web._state import state

bp = Blueprint("feedback", __name__)


def _known(kb: KnowledgeBase, service_id: str) -> bool:
    # A PlanDefinition id is callable (the request's hook selects), so it takes feedback too.
    return service_id in kb.services or any(s.plan.id == service_id for s in kb.services.values())


def _check_storable(value: Any, where: str) -> None:
    """JSON can carry text no database stores (NUL, lone surrogates): 400, not a failed write."""
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
            raise InvalidRequest(f"{where}: holds characters that cannot be stored (NUL or a lone surrogate)",
                                 field=where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_storable(item, f"{where}[{i}]")


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    current = state()
    if not _known(current.kb, service_id):
        raise ServiceNotFound(f"no CDS service '{service_id}'")
    record().service = service_id
    body = read_json()
    service.validate("feedback", body)
    _check_storable(body["feedback"], "feedback")
    rows = feedback_rows(body, service_id, current.clock())
    # An unknown card uuid is stored all the same (unlinked): the client cannot fix it,
    # the card may come from another replica whose record is still on its way (it links
    # when it lands), and refusing would lose the clinician's answer.
    new = current.feedback.store_feedback(rows, current.settings.feedback_wait)
    record().feedback = dict(Counter(r.outcome for r in rows))
    return jsonify({"stored": new, "duplicates": len(rows) - new})
