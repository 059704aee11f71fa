"""`mm-cds terminology expand`: build-time RxNorm expansion of drug value sets through RxNav
(RECOMMENDATIONS-v2 D-10), written into a site directory; the shipped files are never edited.

A shipped ValueSet carrying `{base}/StructureDefinition/rxnav-expand` = true is expanded,
starting from the RxNorm codes it lists itself (the seeds): for each, RxNav's

    GET {rxnav}/rxcui/{rxcui}/related.json?tty=IN+PIN+MIN+SCD+SBD+SCDC+GPCK+BPCK

answers {"relatedGroup": {"conceptGroup": [{"tty": "SCD", "conceptProperties":
[{"rxcui", "name", "tty", ...}]}]}}. The codes it names that the value set lacks are added
as one more compose.include, each with its source (RxNav, the seed, the date); a code
reached from an unverified seed stays unverified (a wrong seed names another drug's
products). The result keeps the shipped url, compose (with its -site companion) and
extensions, and records the run in expansion.timestamp and expansion.parameter; as a
file in a site directory it replaces the shipped value set at start-up (logged).

Nothing is written unless every call succeeded: RxNav down, an HTTP error or an answer of
the wrong shape stops the command with one line naming the URL, and exit status 1.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TERM_TYPES = ("IN", "PIN", "MIN", "SCD", "SBD", "SCDC", "GPCK", "BPCK")
EXT_EXPAND = "/StructureDefinition/rxnav-expand"
EXT_SOURCE = "/StructureDefinition/concept-source"
EXT_UNVERIFIED = "/StructureDefinition/concept-unverified"
TIMEOUT = 30.0

Fetch = Callable[[str], Any]  # URL -> decoded JSON; raises RxNavError


class RxNavError(Exception):
    """RxNav could not be asked, or answered something this command cannot read."""


def http_fetch(url: str) -> Any:
    try:
        response = requests.get(url, timeout=TIMEOUT, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise RxNavError(f"cannot reach RxNav at {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise RxNavError(f"RxNav answered HTTP {response.status_code} for {url}")
    try:
        return response.json()
    except ValueError:
        raise RxNavError(f"RxNav's answer to {url} is not JSON") from None


def related(base: str, rxcui: str, fetch: Fetch) -> list[tuple[str, str, str]]:
    """(rxcui, name, tty) of every concept of the wanted term types related to `rxcui`."""
    url = f"{base.rstrip('/')}/rxcui/{rxcui}/related.json?tty={'+'.join(TERM_TYPES)}"
    body = fetch(url)
    group = body.get("relatedGroup") if isinstance(body, dict) else None
    if not isinstance(group, dict):
        raise RxNavError(f"RxNav's answer to {url} has no relatedGroup (not the related.json shape)")
    found = []
    for concept_group in group.get("conceptGroup") or []:  # RxNav omits it for an unknown rxcui
        for props in (concept_group or {}).get("conceptProperties") or []:
            code, name, tty = props.get("rxcui"), props.get("name"), props.get("tty") or concept_group.get("tty")
            if not (isinstance(code, str) and code.isdigit() and isinstance(name, str)):
                raise RxNavError(f"RxNav's answer to {url} holds a concept without a numeric rxcui and a name")
            if tty in TERM_TYPES:
                found.append((code, name, tty))
    return found


def _has_ext(element: dict, suffix: str) -> bool:
    return any(e.get("url", "").endswith(suffix) and e.get("valueBoolean") is True
               for e in element.get("extension", []) or [])


def marked(value_sets: list[dict]) -> list[dict]:
    return sorted((vs for vs in value_sets if _has_ext(vs, EXT_EXPAND)), key=lambda vs: vs["url"])


def seeds(vs: dict) -> list[tuple[str, bool]]:
    """(rxcui, unverified) of the RxNorm codes the value set lists itself."""
    return [(c["code"], _has_ext(c, EXT_UNVERIFIED))
            for inc in (vs.get("compose") or {}).get("include", []) if inc.get("system") == RXNORM
            for c in inc.get("concept", [])]


def expand(vs: dict, base_url: str, rxnav: str, fetch: Fetch, now: dt.datetime) -> tuple[dict, int]:
    """The expanded copy of `vs` and how many codes RxNav added."""
    listed = {code for code, _ in seeds(vs)}
    added: dict[str, dict] = {}
    for seed, unverified in seeds(vs):
        for code, name, tty in related(rxnav, seed, fetch):
            if code in listed or code in added:
                continue
            ext: list[dict[str, Any]] = [{"url": base_url + EXT_SOURCE,
                    "valueString": f"RxNav {rxnav} related.json of {seed} ({tty}), {now.date().isoformat()}"
                                   + ("; the seed is unverified: confirm it" if unverified else "")}]
            if unverified:
                ext.append({"url": base_url + EXT_UNVERIFIED, "valueBoolean": True})
            added[code] = {"extension": ext, "code": code, "display": name}
    out = copy.deepcopy(vs)
    if added:
        out.setdefault("compose", {}).setdefault("include", []).append(
            {"system": RXNORM, "concept": sorted(added.values(), key=lambda c: int(c["code"]))})
    # Records the run; no `contains`, so the engine still expands compose (and the -site companion).
    out["expansion"] = {"timestamp": now.isoformat(timespec="seconds"), "parameter": [
        {"name": "rxnav", "valueUri": rxnav},
        {"name": "termTypes", "valueString": " ".join(TERM_TYPES)},
        {"name": "seeds", "valueString": " ".join(sorted(listed)) or "(none)"},
    ]}
    return out, len(added)


def run(value_sets: list[dict], base_url: str, rxnav: str, out_dir: Path, fetch: Fetch = http_fetch,
        now: dt.datetime | None = None) -> list[str]:
    """Expand every marked value set, then write them all; the report lines. Raises RxNavError."""
    now = now or dt.datetime.now(dt.timezone.utc)
    results, report = [], []
    for vs in marked(value_sets):
        if not seeds(vs):
            report.append(f"  - {vs['id']}: no RxNorm code to expand from (site companion only): skipped")
            continue
        expanded, count = expand(vs, base_url, rxnav, fetch, now)
        results.append(expanded)
        report.append(f"  - {vs['id']}: {count} code(s) added from {len(seeds(vs))} seed(s)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for expanded in results:
        # A name of its own, so a site's hand-written file for the same directory is never overwritten.
        path = out_dir / f"ValueSet-{expanded['id']}.rxnav.json"
        path.write_text(json.dumps(expanded, indent=2, ensure_ascii=False) + "\n")
    return report
