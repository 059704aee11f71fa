"""Repeat suppression (RECOMMENDATIONS-v2 2.4, R-1 to R-9) and the order-select/order-sign
duplicate rule (2.5, O-1 to O-3), decided from the service's own store of issued cards and
feedback. The rules are here; the windows and fingerprints are data (the repeat-suppression
extension, knowledge/_compiler.py); the look-up is the caller's `history` (feedback/_lookup.py:
one query per call, a timeout, StoreUnavailable when slow or down, and then we fail open).

Keys are keyed hashes (B-0.7): nothing here sees an identifier.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cds_service.engine import CardResult, PlanResult
from cds_service.errors import StoreUnavailable
from cds_service.knowledge import INDICATOR_RANK, Suppression

UNAVAILABLE = "suppression store unavailable"
History = Callable[..., list[dict[str, Any]]]  # (patient_key, since, user_key, codes, *, hook, encounter_key) -> rows


@dataclass(frozen=True)
class Repeat:
    """What one call brings to the rules: its keys and the look-up."""

    hook: str
    patient: str
    user: str
    encounter: str | None
    trigger_orders: tuple[str, ...]
    history: History
    scope: str = "patient"  # or "patient+user"
    ignored_hours: float = 24.0
    order_hours: float = 12.0


@dataclass
class Decision:
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> trace entry
    note: str | None = None  # UNAVAILABLE when the look-up failed (fail open)
    looked_up: bool = False

    def trace(self) -> dict[str, Any]:
        out: dict[str, Any] = {"suppressed": list(self.decisions.values())}
        if self.note:
            out["note"] = self.note
        return out


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _limit(not_beyond: str | None) -> dt.datetime | None:
    """notBeyond as a moment: a date means the end of that day (UTC)."""
    if not not_beyond:
        return None
    if len(not_beyond) == 10:
        try:
            return dt.datetime.fromisoformat(not_beyond).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        except ValueError:
            return None
    return parse_time(not_beyond)


def candidates(result: PlanResult) -> list[CardResult]:
    """The fired chart cards and bundle members that carry a repeat-suppression rule."""
    out = []
    for card in result.fired:
        for entry in card.fired_members if card.action.is_bundle else [card]:
            if entry.action.suppression is not None:
                out.append(entry)
    return out


def decide(result: PlanResult, repeat: Repeat, now: dt.datetime) -> Decision:
    if repeat.hook == "patient-view":
        return _chart(result, repeat, now)
    if repeat.hook == "order-sign":
        return _order_sign(result, repeat, now)
    return Decision()  # order-select: never suppressed


def _chart(result: PlanResult, repeat: Repeat, now: dt.datetime) -> Decision:
    found = candidates(result)
    decision = Decision()
    if not found:
        return decision
    rules = [c.action.suppression for c in found if c.action.suppression]
    longest = max(max(r.longest_days for r in rules), repeat.ignored_hours / 24)
    since = now - dt.timedelta(days=longest)
    user = repeat.user if repeat.scope == "patient+user" else None
    try:
        rows = repeat.history(repeat.patient, since, user, tuple(sorted({c.code for c in found})))
    except StoreUnavailable:
        decision.note = UNAVAILABLE
        return decision
    decision.looked_up = True
    by_code: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_code.setdefault(row["code"], []).append(row)
    for card in found:
        rule = card.action.suppression
        assert rule is not None
        verdict = _one(card, rule, by_code.get(card.code, []), repeat, now)
        if verdict is not None:
            decision.decisions[card.code] = verdict
    return decision


def _one(card: CardResult, rule: Suppression, rows: list[dict[str, Any]], repeat: Repeat,
         now: dt.datetime) -> dict[str, Any] | None:
    answered = [(t, r) for r in rows if r.get("outcome") and (t := parse_time(r.get("outcome_timestamp")))]
    newest_answer = max(answered, key=lambda p: p[0]) if answered else None
    if newest_answer is not None:  # the newest feedback row decides
        when, row = newest_answer
        if row["outcome"] == "overridden":
            until = when + dt.timedelta(days=rule.override_days(row.get("override_system"), row.get("override_code")))
            limit = _limit(card.not_beyond)
            if limit is not None:
                until = min(until, limit)
            same = row.get("fingerprint") == card.fingerprint
            not_higher = INDICATOR_RANK.get(card.indicator, 0) <= INDICATOR_RANK.get(row.get("indicator") or "info", 0)
            if now < until and same and not_higher:
                return _entry(card.code, "R-2", when, row, until)
        elif row["outcome"] == "accepted":
            until = when + dt.timedelta(days=rule.after_accept_days)
            if now < until and row.get("fingerprint") == card.fingerprint:
                return _entry(card.code, "R-3", when, row, until)
    # a chart card issued since the newest feedback and never acted on comes back once
    # per ignoredRepeatHours (the same fingerprint; a changed one is news).
    after = newest_answer[0] if newest_answer else None
    ignored = []
    for row in rows:
        issued = parse_time(row.get("issued_at"))
        if (issued is None or row.get("hook") != "patient-view" or row.get("outcome")
                or row.get("fingerprint") != card.fingerprint or (after is not None and issued <= after)):
            continue
        ignored.append(issued)
    if ignored:
        until = max(ignored) + dt.timedelta(hours=repeat.ignored_hours)
        if now < until:
            return {"code": card.code, "rule": "R-4", "issuedAt": _stamp(max(ignored)), "outcome": "(no feedback)",
                    "suppressedUntil": _stamp(until)}
    return None


def _entry(code: str, rule: str, when: dt.datetime, row: dict[str, Any], until: dt.datetime) -> dict[str, Any]:
    reason = row.get("override_code")
    return {"code": code, "rule": rule, "feedbackTime": _stamp(when), "outcome": row["outcome"],
            "reason": reason or "(no reason given)" if row["outcome"] == "overridden" else None,
            "suppressedUntil": _stamp(until)}


def order_fingerprint(codes: list[str] | tuple[str, ...]) -> str:
    """An order card's fingerprint (O-1): the sorted recommendation codes it reports."""
    return json.dumps(sorted(codes))


def _order_sign(result: PlanResult, repeat: Repeat, now: dt.datetime) -> Decision:
    """O-1: an order-sign card overridden at order-select for the same patient and encounter,
    trigger orders a subset, same fingerprint, within order_hours: not issued again.
    O-2: any other case is issued. O-3: a critical card is always issued again."""
    decision = Decision()
    found = [c for c in result.fired if c.indicator != "critical"]
    if not found or not repeat.trigger_orders:
        return decision
    since = now - dt.timedelta(hours=repeat.order_hours)
    try:
        # Only what O-1 reads: this encounter's order-select cards issued in the window (the
        # filter below stays: a history that ignores the keywords is still answered right).
        rows = repeat.history(repeat.patient, since, None, (), hook="order-select", encounter_key=repeat.encounter)
    except StoreUnavailable:
        decision.note = UNAVAILABLE
        return decision
    decision.looked_up = True
    cards: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("hook") != "order-select" or row.get("encounter_key") != repeat.encounter:
            continue
        issued = parse_time(row.get("issued_at"))
        if issued is None or issued < since:
            continue
        entry = cards.setdefault(row["card_uuid"], {"row": row, "codes": set(), "overridden": None})
        entry["codes"].add(row["code"])
        when = parse_time(row.get("outcome_timestamp"))
        if row.get("outcome") == "overridden" and when is not None:
            entry["overridden"] = when
    current = set(repeat.trigger_orders)
    for card in found:
        fingerprint = order_fingerprint(card.codes)
        for entry in cards.values():
            previous = set(json.loads(entry["row"].get("trigger_orders") or "[]"))
            if (entry["overridden"] is not None and current <= previous
                    and order_fingerprint(sorted(entry["codes"])) == fingerprint):
                issued = parse_time(entry["row"]["issued_at"])
                until = (issued or now) + dt.timedelta(hours=repeat.order_hours)
                if issued is not None and now < until:
                    decision.decisions[card.code] = _entry(card.code, "O-1", entry["overridden"], entry["row"], until)
                    break
    return decision
