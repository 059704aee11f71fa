"""Render fired actions as CDS Hooks 2.0 cards (the HL7 "CDS on FHIR" mapping).

action.title -> summary; description -> detail (with the citations appended as links);
priority -> indicator; documentation -> source and links; code -> source.topic; nested
actions -> suggestions; selectionBehavior; override reasons -> overrideReasons.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from cds_service.engine._evaluate import CardResult, PlanResult


@dataclass(frozen=True)
class IssuedCard:
    """What the service remembers of a card it sent (for feedback)."""

    uuid: str
    code: str
    plan_url: str
    plan_version: str | None
    suggestions: tuple[str, ...]


def render(result: PlanResult) -> tuple[list[dict[str, Any]], list[IssuedCard]]:
    cards, issued = [], []
    for fired in result.fired:
        card = _card(fired)
        cards.append(card)
        issued.append(
            IssuedCard(
                uuid=card["uuid"],
                code=fired.action.code.get("code", ""),
                plan_url=result.plan.url,
                plan_version=result.plan.version,
                suggestions=tuple(s["uuid"] for s in card.get("suggestions", [])),
            )
        )
    return cards, issued


def _card(fired: CardResult) -> dict[str, Any]:
    action = fired.action
    linked = [c for c in action.citations if c.url]
    primary = linked[0] if linked else (action.citations[0] if action.citations else None)
    source: dict[str, Any] = {"label": primary.label if primary else action.code.get("display", action.code.get("code", ""))}
    if primary and primary.url:
        source["url"] = primary.url
    source["topic"] = dict(action.code)
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": fired.title,
        "indicator": action.indicator,
        "source": source,
    }
    detail = _detail(fired.description, action.citations)
    if detail:
        card["detail"] = detail
    if fired.suggestions:
        card["suggestions"] = [_suggestion(s) for s in fired.suggestions]
        card["selectionBehavior"] = action.selection_behavior
    if action.override_reasons:
        card["overrideReasons"] = [dict(r) for r in action.override_reasons]
    if linked:
        card["links"] = [{"label": c.label, "url": c.url, "type": "absolute"} for c in linked]
    return card


def _detail(description: str | None, citations) -> str:
    parts = [description.strip()] if description else []
    if citations:
        cited = [f"[{c.label}]({c.url})" if c.url else c.label for c in citations]
        parts.append("Sources: " + "; ".join(cited) + ".")
    return "\n\n".join(parts)


def _suggestion(result) -> dict[str, Any]:
    action = result.action
    suggestion: dict[str, Any] = {
        "label": action.title,
        "uuid": str(uuid.uuid4()),
        "actions": [
            {
                "type": "create",
                "description": action.description or action.title,
                "resource": result.resource,
            }
        ],
    }
    if action.recommended:
        suggestion["isRecommended"] = True
    return suggestion
