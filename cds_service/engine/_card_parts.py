"""The pieces a card is made of, shared by plain cards (_cards) and bundles (_bundle_cards)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from cds_service.engine._evaluate import CardResult, SuggestionResult
from cds_service.knowledge import RECOMMENDATIONS_KEY, Citation


def card_head(fired: CardResult, summary: str, indicator: str, citations: Sequence[Citation]) -> dict[str, Any]:
    """uuid, summary, indicator, source (from `citations`; topic: the action's code) and extension."""
    action = fired.action
    linked = [c for c in citations if c.url]
    primary = linked[0] if linked else (citations[0] if citations else None)
    source: dict[str, Any] = {"label": primary.label if primary else action.code.get("display", fired.code)}
    if primary and primary.url:
        source["url"] = primary.url
    source["topic"] = dict(action.code)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": indicator,
        "source": source,
        "extension": {RECOMMENDATIONS_KEY: list(fired.codes)},
    }


def links(card: dict[str, Any], citations: Sequence[Citation]) -> None:
    linked = list({c.url: c for c in citations if c.url}.values())
    if linked:
        card["links"] = [{"label": c.label, "url": c.url, "type": "absolute"} for c in linked]


def detail_text(description: str | None, citations: Sequence[Citation]) -> str:
    parts = [description.strip()] if description else []
    if citations:
        cited = [f"[{c.label}]({c.url})" if c.url else c.label for c in citations]
        parts.append("Sources: " + "; ".join(cited) + ".")
    return "\n\n".join(parts)


def suggestion(result: SuggestionResult, label: str | None = None, resource: dict | None = None) -> dict[str, Any]:
    action = result.action
    made: dict[str, Any] = {
        "label": label or action.title,
        "uuid": str(uuid.uuid4()),
        "actions": [
            {
                "type": "create",
                "description": action.description or action.title,
                "resource": result.resource if resource is None else resource,
            }
        ],
    }
    if action.recommended:
        made["isRecommended"] = True
    return made
