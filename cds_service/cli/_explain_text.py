"""The explain trace as text for a terminal (`mm-cds explain`).

Works from a CDS Hooks response alone (its cards and its org.myeloma-cds.explain
extension), so it reads an in-process answer and a running service's answer alike.
"""

from __future__ import annotations

import json
from typing import Any

from cds_service.engine import EXPLAIN_KEY
from cds_service.scenarios import card_code, card_codes

_WIDTH = 70


def trace_of(response: dict[str, Any]) -> dict[str, Any] | None:
    return (response.get("extension") or {}).get(EXPLAIN_KEY)


def render(response: dict[str, Any]) -> str:
    trace = trace_of(response)
    cards = {card_code(c): c for c in response.get("cards") or []}
    if trace is None:
        fired = ", ".join(sorted(code for c in cards.values() for code in card_codes(c))) or "none"
        return (f"cards: {fired}\n(no trace in the answer: the service must run with explain enabled "
                "(MM_CDS_EXPLAIN_ENABLED=1) and trust the caller: loopback or an authenticated JWT)")
    lines = [f"{trace['service']} ({trace['hook']})  {trace['planDefinition']}  now {trace['now']}"]
    if trace.get("triggerOrders"):
        lines.append("trigger orders: " + ", ".join(trace["triggerOrders"]))
    lines += ["", "Cards"] + [line for action in trace["actions"] for line in _action(action, cards.get(action["code"]))]
    lines += ["", "Data requirements (source, received -> kept)"] + _requirements(trace["dataRequirements"])
    if trace.get("notes"):
        lines += ["", "Notes"] + [f"  - {note}" for note in trace["notes"]]
    lines += ["", "Codes that matched no value set"] + (_unmatched(trace["unmatchedCodes"]) or ["  (none)"])
    return "\n".join(lines)


def _action(action: dict[str, Any], card: dict[str, Any] | None, indent: str = "  ", label: str = "") -> list[str]:
    head = "FIRED    " if action["fired"] else "not fired"
    title = f"  {card['summary']}  [{card['indicator']}]" if card else ""
    lines = [f"{indent}{label}{head}  {action['code']}{title}"]
    for condition in action["conditions"]:
        lines.append(f"{indent}    {_outcome(condition):<8} {condition.get('description') or condition['expression']}")
        if condition.get("error"):
            lines.append(f"{indent}             error: {condition['error']}")
        elif condition.get("note"):
            lines.append(f"{indent}             {condition['note']}")
    if action.get("note"):
        lines.append(f"{indent}    {action['note']}")
    for member in action.get("members") or []:  # a bundle: each member, fired or not
        lines += _action(member, None, indent + "    ", "member ")
    if card and card.get("suggestions"):
        lines.append("      suggests: " + "; ".join(s["label"] for s in card["suggestions"]))
    return lines


def _outcome(condition: dict[str, Any]) -> str:
    if condition.get("error"):
        return "error"
    value = condition.get("value")
    if isinstance(value, bool):
        return str(value).lower()
    text = json.dumps(value, default=str)
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _requirements(reports: dict[str, dict[str, Any]]) -> list[str]:
    width = max((len(k) for k in reports), default=0)
    lines = []
    for key, report in reports.items():
        line = f"  {key:<{width}}  {report['source']:<14} {report['received']:>3} -> {report['count']}"
        extras = [report["note"]] if report.get("note") else []
        if report.get("droppedOtherPatient"):
            extras.append(f"{report['droppedOtherPatient']} of another patient dropped")
        lines.append(line + (f"  ({'; '.join(extras)})" if extras else ""))
    return lines


def _unmatched(codes: list[dict[str, Any]]) -> list[str]:
    return [f"  - {c.get('system') or '(no system)'}|{c['code']}  ({c['resourceType']}.{c['element']} in "
            f"{', '.join(c['in'])})" for c in codes]
