"""The schema checks of a call (service/_validation.py) are cheap and still refuse (issue 12).

Counted, not timed: workload (a) of bench/workloads.py (a first teclistamab order for an
unscreened patient, 9 cards after bundling, 14 recommendations) run in process after warm-up builds no validator and never
walks the response schema in Python (the reference validator checks a card only after
the compiled one refused the response); every non-conformant card is refused, and the
compiled validator agrees with the reference on every mutation of real cards.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from cds_service import fhirpath, service
from cds_service.service import _call
from cds_service.service import _validation as validation

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_workloads", ROOT / "bench" / "workloads.py")
assert _spec and _spec.loader
workloads = sys.modules["bench_workloads"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workloads)


@pytest.fixture(scope="module")
def busy(kb):
    """(kb, service, body, fetch settings) of workload (a) at 300 resources."""
    from cds_service.web import create_app, state_of

    app = create_app({}, kb=kb, clock=lambda: workloads.NOW)
    state = state_of(app)
    svc, body, _facts = workloads.request("a", 300, kb.services.values())
    yield kb, svc, body, state.fetch
    state.feedback.close()


def run(busy, calls: int) -> list[dict]:
    kb, svc, body, fetch = busy
    return [service.call(kb, svc, body, workloads.NOW, fetch) for _ in range(calls)]


def test_workload_a_card_check_walks_no_schema_after_warm_up(busy):
    warm = run(busy, 2)
    assert len(warm[-1].response["cards"]) == 9  # the busy call, not a cheap one
    before = validation.check_counts()
    outcomes = run(busy, 5)
    after = validation.check_counts()
    assert after.get("reference_card_checks", 0) == before.get("reference_card_checks", 0)  # no card walked in Python
    assert after.get("compiled_built") == before.get("compiled_built") >= 1  # compiled at load, never again
    assert after.get("reference_built") == before.get("reference_built")
    assert after.get("reference_body_checks", 0) == before.get("reference_body_checks", 0)  # request, context
    for outcome in outcomes:  # and what was sent conforms, by the reference validator
        assert len(outcome.response["cards"]) == 9 and outcome.dropped == 0
        assert validation.response_errors(outcome.response) == []


def test_workload_a_parses_no_unit_after_warm_up(busy):
    """Failed unit conversions are cached like successful ones: the same odd units on every
    call cost no parse after the first (issue 12: 27 parses per call before)."""
    run(busy, 2)
    before = fhirpath.unit_parse_count()
    run(busy, 5)
    assert fhirpath.unit_parse_count() == before


# -- refusing ------------------------------------------------------------------------------------
def _cards(busy) -> list[dict]:
    return copy.deepcopy(run(busy, 1)[0].response["cards"])


def _first(cards: list[dict], key: str) -> dict:
    return next(c for c in cards if key in c)


BREAKS = {
    "indicator not in the 2.0 set": lambda cs: cs[0].update(indicator="hard-stop"),
    "summary of 140 characters": lambda cs: cs[0].update(summary="x" * 140),
    "summary of 200 characters": lambda cs: cs[0].update(summary="y" * 200),
    "empty summary": lambda cs: cs[0].update(summary=""),
    "no source label": lambda cs: cs[0]["source"].pop("label"),
    "empty source label": lambda cs: cs[0]["source"].update(label=""),
    "no uuid": lambda cs: cs[0].pop("uuid"),
    "uuid not a uuid": lambda cs: cs[0].update(uuid="card-1"),
    "upper-case uuid": lambda cs: cs[0].update(uuid=cs[0]["uuid"].upper()),
    "a suggestion without uuid": lambda cs: _first(cs, "suggestions")["suggestions"][0].pop("uuid"),
    "a suggestion without label": lambda cs: _first(cs, "suggestions")["suggestions"][0].pop("label"),
    "suggestions without selectionBehavior": lambda cs: _first(cs, "suggestions").pop("selectionBehavior"),
    "a create action without resource": lambda cs: _first(cs, "suggestions")["suggestions"][0]["actions"][0].pop("resource"),
    "an action resource without resourceType": lambda cs: _first(cs, "suggestions")["suggestions"][0]["actions"][0]["resource"].pop("resourceType"),
    "a warning without overrideReasons": lambda cs: next(c for c in cs if c["indicator"] == "warning").pop("overrideReasons"),
    "a property 2.0 does not define": lambda cs: cs[0].update(severity="high"),
    "a link of an unknown type": lambda cs: _first(cs, "links")["links"][0].update(type="relative"),
    "a source url that is not one": lambda cs: cs[0]["source"].update(url="not a url"),
    "detail not a string": lambda cs: cs[0].update(detail=["x"]),
}


@pytest.mark.parametrize("what", sorted(BREAKS))
def test_a_non_conformant_card_is_refused_and_the_others_kept(busy, what):
    cards = _cards(busy)
    BREAKS[what](cards)
    broken = [i for i, c in enumerate(cards) if validation.response_errors({"cards": [c]})]
    assert len(broken) == 1, broken  # the reference validator refuses exactly the broken card
    before = validation.check_counts().get("reference_card_checks", 0)
    refused = validation.refused_cards(cards)
    assert set(refused) == set(broken) and all(refused.values())
    assert validation.check_counts()["reference_card_checks"] == before + len(cards)  # the slow path, only now


def test_a_refused_card_is_dropped_from_the_call_and_logged(busy, monkeypatch, caplog):
    real = _call.render

    def render_breaking_one(result):
        cards, issued = real(result)
        cards[1]["indicator"] = "hard-stop"
        return cards, issued

    monkeypatch.setattr(_call, "render", render_breaking_one)
    outcome = run(busy, 1)[0]
    assert len(outcome.response["cards"]) == 8 and outcome.dropped == 1
    assert all(c["indicator"] != "hard-stop" for c in outcome.response["cards"])
    dropped = [r for r in caplog.records if getattr(r, "event", None) == "card_dropped"]
    assert len(dropped) == 1 and any("hard-stop" in e for e in dropped[0].errors)


def _mutations(value, path=()):
    """(path, replacement or DELETE) for every element of a card: wrong types, empties, too long."""
    if isinstance(value, dict):
        yield path + ("added-property",), "x"
        for key, child in value.items():
            yield path + (key,), _DELETE
            yield from _mutations(child, path + (key,))
    elif isinstance(value, list):
        yield path, []
        for i, child in enumerate(value[:2]):
            yield from _mutations(child, path + (i,))
    for wrong in (None, "", 7, True, "Z" * 141, {}, [value]):
        yield path, wrong


_DELETE = object()


def _apply(card: dict, path: tuple, replacement) -> dict:
    out = copy.deepcopy(card)
    target = out
    for part in path[:-1]:
        target = target[part]
    if replacement is _DELETE:
        del target[path[-1]]
    elif path[-1] == "added-property":
        target["added-property"] = replacement
    else:
        target[path[-1]] = replacement
    return out


@pytest.mark.slow  # about 2 s: thousands of mutations through the reference validator
def test_the_compiled_validator_agrees_with_the_reference_on_mutated_cards(busy):
    shapes: dict[tuple, dict] = {}  # one card per set of elements (suggestions, links, overrideReasons...)
    for card in _cards(busy):
        shapes.setdefault((card["indicator"], *sorted(card)), card)
    seen, refused = set(), 0
    compiled = validation.compiled("response")
    for card in shapes.values():
        for path, replacement in _mutations(card):
            if not path:
                continue
            mutated = _apply(card, path, replacement)
            text = json.dumps(mutated, sort_keys=True)
            if text in seen:
                continue
            seen.add(text)
            reference = not validation.response_errors({"cards": [mutated]})
            assert compiled.is_valid({"cards": [mutated]}) is reference, (path, replacement)
            refused += not reference
    assert len(seen) > 900 and refused > 500  # many mutations, most of them refused


def test_card_and_suggestion_uuids_are_random_version_4_uuids():
    import uuid

    from cds_service.engine._card_parts import new_uuid

    made = [new_uuid() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_a_forked_worker_never_repeats_the_uuids_of_its_parent():
    import os

    from cds_service.engine._card_parts import new_uuid

    new_uuid()  # the parent has drawn random bytes it has not used yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, "\n".join(new_uuid() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_uuid() for _ in range(10)}
    assert len(child) == 10 and not child & parent
