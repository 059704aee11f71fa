"""Render a fired bundle as one CDS Hooks card (RECOMMENDATIONS-v2 B-0.2 to B-0.6).

indicator: the highest of the fired members'; summary: the bundle's (dynamic) title;
detail: the bundle's description, then per fired member, in plan order, "[CODE] title",
its own detail and Sources line; members with a prefix (e.g. "Review") are listed under
that heading after the others. Suggestions: the fired members' own, each label ending
with " (CODE)" and each resource tagged with the member code, no two ordering the same
ActivityDefinition. Override reasons: the members' and the bundle's, each once.
"""

from __future__ import annotations

from typing import Any

from cds_service.engine._card_parts import card_head, detail_text, links, suggestion
from cds_service.engine._evaluate import CardResult
from cds_service.knowledge import INDICATOR_RANK


def bundle_card(fired: CardResult) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The card, and (suggestion uuid, member code) for each of its suggestions."""
    bundle = fired.action
    members = fired.fired_members
    indicator = max((m.indicator for m in members), key=INDICATOR_RANK.__getitem__)
    citations = bundle.citations or members[0].action.citations
    card = card_head(fired, fired.title, indicator, citations)
    card["detail"] = _detail(fired, members)
    made, owners = _suggestions(members)
    if made:
        card["suggestions"] = made
        card["selectionBehavior"] = bundle.selection_behavior
    reasons = {(r["system"], r["code"]): r for m in members for r in m.action.override_reasons}
    for reason in bundle.override_reasons:
        reasons.setdefault((reason["system"], reason["code"]), reason)
    if reasons:
        card["overrideReasons"] = [dict(r) for r in reasons.values()]
    links(card, [*bundle.citations, *(c for m in members for c in m.action.citations)])
    return card, owners


def _detail(fired: CardResult, members: list[CardResult]) -> str:
    parts = [fired.description.strip()] if fired.description else []
    parts += [_member_text(m) for m in members if not m.prefix]
    headings = list(dict.fromkeys(m.prefix for m in members if m.prefix))
    for heading in headings:
        parts.append(f"**{heading}**")
        parts += [_member_text(m) for m in members if m.prefix == heading]
    return "\n\n".join(parts)


def _member_text(member: CardResult) -> str:
    own = detail_text(member.description, member.action.citations)
    return f"[{member.code}] {member.title}" + (f"\n\n{own}" if own else "")


def _suggestions(members: list[CardResult]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    made: list[dict[str, Any]] = []
    owners: list[tuple[str, str]] = []
    ordered: set[str] = set()
    for member in members:
        system = member.action.code.get("system")
        for result in member.suggestions:
            url = result.action.definition.url
            if url in ordered:
                continue  # two members asking for the same order: the clinician sees it once
            ordered.add(url)
            # The member's tag on a copy of the resource's top and meta only: the rest is
            # shared, never changed (a deep copy was most of the time of rendering).
            resource = dict(result.resource)
            meta = dict(resource.get("meta") or {})
            meta["tag"] = [*(meta.get("tag") or []),
                           {k: v for k, v in (("system", system), ("code", member.code)) if v}]
            resource["meta"] = meta
            item = suggestion(result, f"{result.action.title} ({member.code})", resource)
            made.append(item)
            owners.append((item["uuid"], member.code))
    return made, owners
