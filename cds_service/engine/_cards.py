"""Render fired actions as CDS Hooks 2.0 cards (the HL7 "CDS on FHIR" mapping).

action.title -> summary; description -> detail (with the citations appended as links);
priority -> indicator; documentation -> source and links; code -> source.topic; nested
actions -> suggestions; selectionBehavior; override reasons -> overrideReasons. A bundle
is rendered from its fired members (_bundle_cards). Every card lists the recommendation
codes it reports in `extension` (RECOMMENDATIONS_KEY), so an EHR, the scenario harness
and the feedback report see members, not the bundle's topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds_service.engine._bundle_cards import bundle_card
from cds_service.engine._card_parts import card_head, detail_text, links, suggestion
from cds_service.engine._evaluate import CardResult, PlanResult


@dataclass(frozen=True)
class IssuedCard:
    """What the service remembers of a card it sent (for feedback)."""

    uuid: str
    code: str  # source.topic: the recommendation code, or a bundle's topic
    plan_url: str
    plan_version: str | None
    suggestions: tuple[str, ...]
    members: tuple[str, ...] = ()  # the recommendation codes the card reports (its extension)
    suggestion_members: tuple[tuple[str, str], ...] = ()  # (suggestion uuid, member code)
    # per member: (code, data fingerprint, indicator), stored for repeat suppression
    member_facts: tuple[tuple[str, str, str], ...] = ()
    indicator: str = "info"


def render(result: PlanResult) -> tuple[list[dict[str, Any]], list[IssuedCard]]:
    cards, issued = [], []
    for fired in result.fired:
        if fired.action.is_bundle:
            card, owners = bundle_card(fired)
        else:
            card = plain_card(fired)
            owners = [(s["uuid"], fired.code) for s in card.get("suggestions", [])]
        cards.append(card)
        issued.append(
            IssuedCard(
                uuid=card["uuid"],
                code=fired.code,
                plan_url=result.plan.url,
                plan_version=result.plan.version,
                suggestions=tuple(s["uuid"] for s in card.get("suggestions", [])),
                members=tuple(fired.codes),
                suggestion_members=tuple(owners),
                member_facts=tuple((m.code, m.fingerprint, m.indicator) for m in
                                   (fired.fired_members if fired.action.is_bundle else [fired])),
                indicator=card.get("indicator", "info"),
            )
        )
    return cards, issued


def plain_card(fired: CardResult) -> dict[str, Any]:
    action = fired.action
    card = card_head(fired, fired.title, fired.indicator, action.citations)
    detail = detail_text(fired.description, action.citations)
    if detail:
        card["detail"] = detail
    if fired.suggestions:
        card["suggestions"] = [suggestion(s) for s in fired.suggestions]
        card["selectionBehavior"] = action.selection_behavior
    if action.override_reasons:
        card["overrideReasons"] = [dict(r) for r in action.override_reasons]
    links(card, action.citations)
    return card


