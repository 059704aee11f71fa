"""Calling a CDS service: validate -> assemble data -> evaluate -> render -> check -> reply."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from cds_service import engine
from cds_service.data import FetchRecord, FetchSettings, assemble
from cds_service.engine import IssuedCard, evaluate, render
from cds_service.errors import DataUnavailable, InvalidRequest
from cds_service.knowledge import KnowledgeBase, Service
from cds_service.service import _suppression as suppression
from cds_service.service import _validation as validation
from cds_service.service._suppression import Repeat

log = logging.getLogger(__name__)

# What a 412 says about a fetch that failed: its kind, never the target's address, port or
# error text (a caller naming fhirServer must not learn what answers where: no port scan).
FAILURE_WORDS = {
    "timeout": "timeout", "connection": "connection", "http_status": "HTTP error status",
    "not_json": "the answer is not JSON", "operation_outcome": "answered with an OperationOutcome",
    "other_server": "a next link outside fhirServer, not followed", "too_large": "answers over the byte limit, fetch_max_bytes",
    "too_many_pages": "too many pages", "request": "request failed",
}


@dataclass
class HookOutcome:
    response: dict[str, Any]
    issued: list[IssuedCard] = field(default_factory=list)
    dropped: int = 0
    fetches: list[FetchRecord] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)  # codes left out by repeat suppression
    suppression_note: str | None = None  # "suppression store unavailable": failed open


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
    repeat: Repeat | None = None,
) -> HookOutcome:
    check_request(service, body)
    try:
        assembled = assemble(service, body, now, fetch)
    except DataUnavailable as exc:
        raise without_network_details(exc) from None
    result = evaluate(service.plan, assembled.data, kb.terminology, explain)
    decided = suppression.decide(result, repeat, now) if repeat is not None else suppression.Decision()
    if decided.decisions:
        engine.suppress(result, decided.decisions)
    cards, issued = render(result)
    refused = validation.refused_cards(cards)
    kept, kept_issued = [], []
    for position, (card, record) in enumerate(zip(cards, issued, strict=False)):
        if position in refused:
            # A card the 2.0 schema refuses is our bug: never sent, always logged.
            log.error("card dropped", extra={"event": "card_dropped", "service": service.id,
                                             "code": record.code, "errors": refused[position][:5]})
            continue
        kept.append(card)
        kept_issued.append(record)
    response: dict[str, Any] = {"cards": kept}
    if explain:
        assembled.data.retrieved.complete()  # every key's counts, read or not
        response["extension"] = {engine.EXPLAIN_KEY: engine.build_trace(
            service.id, assembled.data, {k: r.as_dict() for k, r in assembled.reports.items()},
            assembled.raw, result, kb.terminology)}
        if repeat is not None:
            response["extension"][engine.EXPLAIN_KEY]["suppression"] = decided.trace()
    return HookOutcome(response, kept_issued, dropped=len(cards) - len(kept), fetches=assembled.fetches,
                       suppressed=list(decided.decisions), suppression_note=decided.note)


def without_network_details(exc: DataUnavailable) -> DataUnavailable:
    """The 412 of failed fetches, saying per key what kind of failure, nothing more."""
    failed = {f.key: f.outcome for f in exc.fetches if f.outcome != "ok"}
    if not failed:
        return exc  # nothing was fetched (e.g. no fhirServer): the message names keys only
    detail = "; ".join(f"{key}: could not be fetched ({FAILURE_WORDS.get(kind, 'request failed')})"
                       for key, kind in sorted(failed.items()))
    if exc.unresolved:  # references from the request's own data: no network detail in them
        detail += (f"; medication reference(s) {', '.join(exc.unresolved)} could not be resolved, "
                   f"needed by {', '.join(exc.keys)}")
    return DataUnavailable(f"required data could not be fetched ({detail})", exc.keys, exc.fetches, exc.unresolved)
