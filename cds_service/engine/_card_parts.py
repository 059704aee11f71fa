"""The pieces a card is made of, shared by plain cards (_cards) and bundles (_bundle_cards)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from cds_service.engine._evaluate import CardResult, SuggestionResult
from cds_service.knowledge import RECOMMENDATIONS_KEY, Citation


class _RandomBytes(threading.local):
    """os.urandom drawn 4 KiB at a time (one system call per 256 UUIDs, not per UUID)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.buffer, self.position = b"", 0

    def take16(self) -> bytes:
        if self.position >= len(self.buffer):
            self.buffer, self.position = os.urandom(4096), 0
        self.position += 16
        return self.buffer[self.position - 16:self.position]


_random = _RandomBytes()
# A worker forked from a process that drew bytes must never reuse them: another worker
# would make the same UUIDs.
os.register_at_fork(after_in_child=_random.reset)


def new_uuid() -> str:
    """A random (version 4) UUID from os.urandom, as uuid.uuid4() makes it, formatted
    directly: a busy card list asks for one per card and per suggestion."""
    h = _random.take16().hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


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
        "uuid": new_uuid(),
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
        "uuid": new_uuid(),
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
