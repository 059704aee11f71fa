"""Calling a CDS service: validate -> assemble data -> evaluate -> render -> check -> reply."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from . import trace, validation
from .assemble import FetchSettings, assemble
from .cards import IssuedCard, render
from .errors import InvalidRequest
from .evaluation import evaluate
from .knowledge import KnowledgeBase
from .model import Service

log = logging.getLogger(__name__)


@dataclass
class HookOutcome:
    response: dict[str, Any]
    issued: list[IssuedCard] = field(default_factory=list)
    dropped: int = 0


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
        response["extension"] = {trace.EXPLAIN_KEY: trace.build(service.id, assembled, result, kb.terminology)}
    return HookOutcome(response, kept_issued, dropped=len(cards) - len(kept))
