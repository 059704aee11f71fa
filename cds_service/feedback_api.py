"""POST /cds-services/{id}/feedback (CDS Hooks 2.0 "Feedback"), and remembering issued
cards so feedback can be linked to the recommendation and PlanDefinition behind them."""

from __future__ import annotations

import logging
from collections import Counter

from flask import Blueprint, Response, g, jsonify

from . import validation
from .app import state
from .errors import ServiceNotFound
from .feedback_db import feedback_rows
from .hooks_api import read_json
from .knowledge import KnowledgeBase

bp = Blueprint("feedback", __name__)
log = logging.getLogger(__name__)


def _known(kb: KnowledgeBase, service_id: str) -> bool:
    # A PlanDefinition id is callable (the request's hook selects), so it takes feedback too.
    return service_id in kb.services or any(s.plan.id == service_id for s in kb.services.values())


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    current = state()
    if not _known(current.kb, service_id):
        raise ServiceNotFound(f"no CDS service '{service_id}'")
    g.service = service_id
    body = read_json()
    validation.check("feedback", body)
    rows = feedback_rows(body, service_id, current.clock())
    # An unknown card uuid is stored all the same (unlinked): the client cannot fix it,
    # the card may come from another replica whose record is still on its way (it links
    # when it lands), and refusing would lose the clinician's answer.
    new = current.feedback.store_feedback(rows, current.settings.feedback_wait)
    g.feedback = dict(Counter(r.outcome for r in rows))
    return jsonify({"stored": new, "duplicates": len(rows) - new})
