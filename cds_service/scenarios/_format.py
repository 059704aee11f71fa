"""Scenario files: patients with the cards they must get (tests/scenarios/*.yaml).

One format, read here for everyone: the pytest harness (through the HTTP API), `mm-cds
test` and `mm-cds explain` (in-process), the "try it" page, and `mm-cds export-patients`.

    defaults:              applied to every scenario of the file
      hook: order-sign
      baseChart: a-baseline          a list kept in the folder's library (_*.yaml), or a list
      baseDraftOrders: other-baseline
      omit: [some-item]              baseline items left out (a typo is an error)
      service: some-service-id       optional: call only this service (default: every
                                     service answering the hook, as an EHR does)
    scenarios:
      - name: CODE-1 fires when ...  (a scenario named after a code tests that code)
        draftOrders: [{use: a-library-resource}]
        chart: [{use: another-resource, authoredOn: "2025-06-14"}]   top-level overrides
        expect: [CODE-1]                          the exact set of recommendation codes
        expectSuggestions: {CODE-1: [A suggestion label]}
        expectDetail: {CODE-1: ["a fragment"]}    fragments the card detail must hold
        expectCards: 2                            optional: the number of cards in the answer
        expectIndicator: {CODE-1: info}           the indicator of the card that holds the code
        expectSummary: {CODE-1: "a fragment"}     a fragment of that card's summary
        expectBundles: {BUNDLE: [CODE-1, CODE-2]} optional: the members each bundled card lists

A bundled card counts as its members (the codes in its extension, RECOMMENDATIONS_KEY):
`expect`, `expectSuggestions` and `expectDetail` name member codes, and look inside the
bundled card that holds them (a member's detail is its "[CODE] ..." section, its
suggestions those whose resource carries its code in meta.tag).

tests/scenarios/ holds the real ones; a wheel carries a copy (config.shipped).

The folder may hold `_settings.yaml` with `site_dirs` (relative to the folder): the site
directories its scenarios are written for.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cds_service.config import shipped
from cds_service.errors import ScenarioError

# The shipped scenarios: tests/scenarios/ in a checkout, the installed package's copy
# (cds_service/_bundled/scenarios, built from it) otherwise.
DEFAULT_FOLDER = shipped("scenarios")
SETTINGS_FILE = "_settings.yaml"
PATIENT_FIELD = {"Immunization": "patient", "AllergyIntolerance": "patient"}
DEFAULT_NOW = "2026-06-15T12:00:00Z"
# The card extension key listing the codes a card reports: knowledge.RECOMMENDATIONS_KEY,
# repeated because scenarios/ and knowledge/ are independent layers (a test keeps them equal).
RECOMMENDATIONS_KEY = "myeloma-cds.recommendations"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ten times faster


def read_yaml(path: Path) -> Any:
    return yaml.load(Path(path).read_text(), Loader=_LOADER)


@dataclass
class Scenario:
    name: str
    hook: str
    chart: list[dict]
    draft_orders: list[dict]
    expect: set[str]
    now: dt.datetime
    patient: str = "p1"
    selections: list[str] | None = None
    encounter: str | None = None
    expect_detail: dict[str, list[str]] = field(default_factory=dict)
    expect_suggestions: dict[str, list[str]] = field(default_factory=dict)
    expect_cards: int | None = None
    expect_bundles: dict[str, list[str]] = field(default_factory=dict)
    expect_indicator: dict[str, str] = field(default_factory=dict)
    expect_summary: dict[str, str] = field(default_factory=dict)
    modes: tuple[str, ...] = ("prefetch", "fetch")
    service: str | None = None
    file: str = ""

    @classmethod
    def from_yaml(cls, raw: dict, defaults: dict, library: dict[str, Any], file: str = "") -> Scenario:
        merged = {**defaults, **raw}
        patient = merged.get("patient", "p1")
        now = merged.get("now", DEFAULT_NOW)
        if isinstance(now, str):
            now = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
        omit = set(defaults.get("omit") or []) | set(raw.get("omit") or [])
        unknown = omit - _baseline_names(merged.get("baseChart"), merged.get("baseDraftOrders"), library=library)
        if unknown:  # a typo here would quietly test nothing
            raise ScenarioError(f"scenario '{raw['name']}' omits {sorted(unknown)}, which the baseline does not hold")
        chart = _base(merged.get("baseChart"), library, omit) + (raw.get("chart") or [])
        drafts = _base(merged.get("baseDraftOrders"), library, omit) + (raw.get("draftOrders") or [])
        return cls(
            name=raw["name"],
            hook=merged["hook"],
            chart=[_resource(item, library, patient, i) for i, item in enumerate(chart)],
            draft_orders=[_resource(item, library, patient, i, "draft") for i, item in enumerate(drafts)],
            expect=set(raw.get("expect") or []),
            now=now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc),
            patient=patient,
            selections=merged.get("selections"),
            encounter=merged.get("encounter"),
            expect_detail=raw.get("expectDetail") or {},
            expect_suggestions=raw.get("expectSuggestions") or {},
            expect_cards=raw.get("expectCards"),
            expect_bundles=raw.get("expectBundles") or {},
            expect_indicator=raw.get("expectIndicator") or {},
            expect_summary=raw.get("expectSummary") or {},
            modes=tuple(merged.get("modes") or ("prefetch", "fetch")),
            service=merged.get("service"),
            file=file,
        )

    @property
    def label(self) -> str:
        return f"{Path(self.file).name}: {self.name}" if self.file else self.name

    def context(self) -> dict[str, Any]:
        context: dict[str, Any] = {"userId": "Practitioner/dr-1", "patientId": self.patient}
        if self.encounter:
            context["encounterId"] = self.encounter
        if self.hook in ("order-select", "order-sign"):
            context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": r} for r in self.draft_orders]}
        if self.hook == "order-select":
            context["selections"] = self.selections or [f"{r['resourceType']}/{r['id']}" for r in self.draft_orders]
        return context

    def as_of(self, today: dt.date) -> Scenario:
        """The same patient moved in time so that its `now` falls on `today`: every date in the
        chart and the draft orders shifts by whole days, so every look-back keeps its answer
        (a service with a real clock, a FHIR server loaded today)."""
        days = (today - self.now.astimezone(dt.timezone.utc).date()).days
        if days == 0:
            return self
        return replace(self, chart=shift_dates(self.chart, days), draft_orders=shift_dates(self.draft_orders, days),
                       now=self.now + dt.timedelta(days=days))


# FHIR date, dateTime and instant values (a year alone or year-month stays as it is).
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?$")


def shift_dates(value: Any, days: int) -> Any:
    """A copy of a JSON value with every full date (and dateTime) moved by `days`."""
    if isinstance(value, dict):
        return {k: shift_dates(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_dates(v, days) for v in value]
    if isinstance(value, str) and (match := _DATE.match(value)):
        moved = dt.date.fromisoformat(match.group(1)) + dt.timedelta(days=days)
        return moved.isoformat() + (match.group(2) or "")
    return value


def _base(base: str | list | None, library: dict[str, Any], omit: set[str]) -> list[dict]:
    """A baseline: a list of items, or the name of a list kept in the library."""
    items = library[base] if isinstance(base, str) else (base or [])
    return [item for item in items if item.get("use") not in omit]


def _baseline_names(*bases: str | list | None, library: dict[str, Any]) -> set[str]:
    return {item.get("use") for base in bases for item in (library[base] if isinstance(base, str) else (base or []))}


def _resource(item: dict, library: dict[str, dict], patient: str, index: int, prefix: str = "r") -> dict:
    item = dict(item)
    name = item.pop("use", None)
    if name is not None:
        if name not in library:
            raise ScenarioError(f"no resource named '{name}' in the scenario library (_*.yaml)")
        item = {**copy.deepcopy(library[name]), **item}
    kind = item.get("resourceType")
    item.setdefault("id", f"{prefix}-{(name or kind or 'x').lower()}-{index}")
    if kind == "Patient":
        item["id"] = patient
    elif kind not in ("Medication",):
        key = PATIENT_FIELD.get(str(kind), "subject")
        item.setdefault(key, {"reference": f"Patient/{patient}"})
    return item


# -- folders and files ------------------------------------------------------------------------


def load_library(folder: Path = DEFAULT_FOLDER) -> dict[str, dict]:
    """The named resources and baselines of a folder (its _*.yaml files but _settings.yaml)."""
    library: dict[str, dict] = {}
    for path in sorted(Path(folder).glob("_*.yaml")):
        if path.name != SETTINGS_FILE:
            library.update(read_yaml(path) or {})
    return library


def folder_site_dirs(folder: Path) -> tuple[str, ...]:
    """The site directories a folder's scenarios are written for (_settings.yaml)."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return ()
    settings = read_yaml(path) or {}
    return tuple(str((Path(folder) / d).resolve()) for d in settings.get("site_dirs") or [])


def load_file(path: Path, library: dict[str, dict] | None = None) -> list[Scenario]:
    path = Path(path)
    raw = read_yaml(path) or {}
    library = load_library(path.parent) if library is None else library
    defaults = raw.get("defaults") or {}
    return [Scenario.from_yaml(entry, defaults, library, str(path)) for entry in raw.get("scenarios") or []]


def scenario_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The scenario files of folders (skipping _*.yaml) and of files named directly."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.glob("*.yaml") if not p.name.startswith("_"))
        else:
            yield path


def load_all(paths: Iterable[Path]) -> list[Scenario]:
    return [s for path in scenario_files(paths) for s in load_file(path)]


def site_dirs_for(paths: Iterable[Path]) -> tuple[str, ...]:
    """Every site directory the folders of these scenario files ask for, once each."""
    folders = dict.fromkeys(p.parent.resolve() for p in scenario_files(paths))
    return tuple(dict.fromkeys(d for folder in folders for d in folder_site_dirs(folder)))


def find(path: Path, name: str) -> Scenario:
    """One scenario of a file by its exact name (or a unique part of it)."""
    scenarios = load_file(path)
    exact = [s for s in scenarios if s.name == name]
    partial = [s for s in scenarios if name.lower() in s.name.lower()]
    found = exact or partial
    if len(found) != 1:
        names = "\n  ".join(s.name for s in (partial or scenarios))
        raise ScenarioError(f"{'no' if not found else 'more than one'} scenario matching '{name}' in {path}:\n  {names}")
    return found[0]


# -- verdicts ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    fired: list[str]
    expected: list[str]
    problems: list[str]

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.expected) - set(self.fired))

    @property
    def unexpected(self) -> list[str]:
        return sorted(set(self.fired) - set(self.expected))

    @property
    def passed(self) -> bool:
        return not self.problems


def card_code(card: dict) -> str:
    """The card's topic: its recommendation code, or a bundle's own code."""
    return ((card.get("source") or {}).get("topic") or {}).get("code", "")


def card_codes(card: dict) -> list[str]:
    """The recommendation codes a card reports: its extension's list (a bundle's fired
    members), else its topic."""
    listed = (card.get("extension") or {}).get(RECOMMENDATIONS_KEY)
    if isinstance(listed, list) and listed:
        return [str(code) for code in listed]
    return [card_code(card)]


def member_detail(card: dict, code: str) -> str:
    """The part of a card's detail about one code: all of it for an unbundled card; in a
    bundle, from the line "[CODE] ..." to the next member's line."""
    detail = card.get("detail", "")
    if card_code(card) == code:
        return detail
    others = tuple(f"[{c}] " for c in card_codes(card) if c != code)
    lines = detail.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(f"[{code}] ")), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(others)), len(lines)) if others else len(lines)
    return "\n".join(lines[start:end])


def member_suggestions(card: dict, code: str) -> list[str]:
    """The labels of a card's suggestions for one code: all of them for an unbundled card;
    in a bundle, those whose proposed resource is tagged with the code."""
    suggestions = card.get("suggestions", [])
    if card_code(card) == code:
        return [s["label"] for s in suggestions]
    return [s["label"] for s in suggestions
            if any(tag.get("code") == code for action in s.get("actions", [])
                   for tag in ((action.get("resource") or {}).get("meta") or {}).get("tag", []))]


def check(scenario: Scenario, cards: list[dict]) -> Verdict:
    """Compare the cards a call returned with what the scenario expects."""
    by_code = {code: c for c in cards for code in card_codes(c)}
    fired = sorted(by_code)
    problems = []
    if set(fired) != scenario.expect:
        problems.append(f"cards {fired} != expected {sorted(scenario.expect)}")
    if scenario.expect_cards is not None and len(cards) != scenario.expect_cards:
        problems.append(f"{len(cards)} card(s) {sorted(map(card_code, cards))} != expected {scenario.expect_cards}")
    for code, fragments in scenario.expect_detail.items():
        detail = member_detail(by_code[code], code) if code in by_code else ""
        problems += [f"{code} detail lacks {f!r}" for f in fragments if f not in detail]
    for code, labels in scenario.expect_suggestions.items():
        got = member_suggestions(by_code[code], code) if code in by_code else []
        if got != labels:
            problems.append(f"{code} suggestions {got} != {labels}")
    for code, indicator in scenario.expect_indicator.items():
        got_indicator = by_code[code].get("indicator") if code in by_code else None
        if got_indicator != indicator:
            problems.append(f"{code} indicator {got_indicator} != {indicator}")
    for code, fragment in scenario.expect_summary.items():
        summary = by_code[code].get("summary", "") if code in by_code else ""
        if fragment not in summary:
            problems.append(f"{code} summary {summary!r} lacks {fragment!r}")
    bundles = {card_code(c): card_codes(c) for c in cards}
    for topic, members in scenario.expect_bundles.items():
        if topic not in bundles:
            problems.append(f"no {topic} card (expected it to hold {sorted(members)})")
        elif sorted(bundles[topic]) != sorted(members):
            problems.append(f"{topic} card holds {sorted(bundles[topic])} != expected {sorted(members)}")
    return Verdict(fired, sorted(scenario.expect), problems)


def patient_id(scenario: Scenario, index: int) -> str:
    """The id a scenario's patient gets when exported to a FHIR server (64 characters at most)."""
    return f"{Path(scenario.file).stem}-{index:02d}"[:64]
