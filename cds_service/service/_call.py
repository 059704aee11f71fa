"""Calling a CDS service: validate -> assemble data -> evaluate -> render -> check -> reply."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from cds_service import engine
from cds_service.data import FetchRecord, FetchSettings, assemble
from cds_service.engine import IssuedCard, evaluate, render
from cds_service.errors import InvalidRequest
from cds_service.knowledge import KnowledgeBase, Service
from cds_service.service import _validation as validation

log = logging.getLogger(__name__)


@dataclass
class HookOutcome:
    response: dict[str, Any]
    issued: list[IssuedCard] = field(default_factory=list)
    dropped: int = 0
    fetches: list[FetchRecord] = field(default_factory=list)


def check_request(service: Service, body: Any) -> None:
    """400 for anything the 2.0 request schema or the hook's context schema refuses."""
    if not isinstance(body, dict):
        raise InvalidRequest("(body): must be a JSON object", field="(body)")
    validation.check("request", body)
    if body["hook"] != service.hook:
        raise InvalidRequest(f"hook: '{body['hook']}' does not match service '{service.id}', "
                             f"which answers {service.hook}", field="hook")
    validation.check(f"context-{service.hook}", body["context"], prefix="context")


def call(
    kb: KnowledgeBase,
    service: Service,
    body: dict[str, Any],
    now: dt.datetime,
    fetch: FetchSettings,
    explain: bool = False,
) -> HookOutcome:
    check_request(service, body)
    assembled = assemble(service, body, now, fetch)
    result = evaluate(service.plan, assembled.data, kb.terminology, explain)
    cards, issued = render(result)
    kept, kept_issued = [], []
    for card, record in zip(cards, issued):
        errors = validation.card_errors(card)
        if errors:
            # A card the 2.0 schema refuses is our bug: never sent, always logged.
            log.error("card dropped", extra={"event": "card_dropped", "service": service.id,
                                             "code": record.code, "errors": errors[:5]})
            continue
        kept.append(card)
        kept_issued.append(record)
    response: dict[str, Any] = {"cards": kept}
    if explain:
        response["extension"] = {engine.EXPLAIN_KEY: engine.build_trace(
            service.id, assembled.data, {k: r.as_dict() for k, r in assembled.reports.items()},
            assembled.raw, result, kb.terminology)}
    return HookOutcome(response, kept_issued, dropped=len(cards) - len(kept), fetches=assembled.fetches)
