"""The go-live gate (RECOMMENDATIONS-v2 D-11): treatment value sets must hold a usable code.

A ValueSet carrying the extension `{base}/StructureDefinition/go-live-required` =
true (the bispecific agents and the CAR-T products) names a treatment that safety rules
trigger on. While such a value set expands (shipped plus site) to no code, or only to
codes marked `concept-unverified`, those rules are silent or rest on unconfirmed codes.
Which value sets are marked is data; what happens is decided by the callers: the
production server refuses to start, the development server warns, /ready answers 503,
`mm-cds terminology check` lists them, unless the setting
`accept_unverified_treatment_codes` (MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES) names
the value set (its id, the last segment of its url) or says `all`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cds_service.errors import ConfigurationError
from cds_service.knowledge._terminology import _ext_value

if TYPE_CHECKING:
    from cds_service.knowledge._load import KnowledgeBase

EXT_GO_LIVE = "/StructureDefinition/go-live-required"
SETTING = "accept_unverified_treatment_codes (MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES)"
ALL = "all"


@dataclass(frozen=True)
class GateItem:
    name: str  # the value set's id: what the accept setting lists
    url: str
    title: str
    reason: str  # "no code" or "only unverified codes (...)"

    def as_json(self) -> dict[str, str]:
        return {"valueSet": self.name, "url": self.url, "title": self.title, "reason": self.reason}

    def line(self) -> str:
        return f"{self.name} ({self.title}): {self.reason}"


@dataclass(frozen=True)
class GateStatus:
    open: tuple[GateItem, ...] = ()  # not met and not accepted
    accepted: tuple[GateItem, ...] = ()  # not met, accepted by the setting
    required: tuple[str, ...] = field(default=())  # every marked value set, by name

    @property
    def met(self) -> bool:
        return not self.open


def required_value_sets(kb: KnowledgeBase) -> dict[str, dict]:
    """Marked value sets by name (url's last segment), from the loaded (site-replaced) artifacts."""
    marked = {}
    for vs in kb.resources("ValueSet"):
        if _ext_value(vs, EXT_GO_LIVE) is True:
            marked[vs["url"].rsplit("/", 1)[-1]] = vs
    return marked


def _item(kb: KnowledgeBase, name: str, vs: dict) -> GateItem | None:
    expanded = kb.terminology.get(vs["url"])
    concepts = expanded.concepts if expanded is not None else []
    title = vs.get("title") or vs.get("name") or name
    if not concepts:
        return GateItem(name, vs["url"], title, f"no code: add the site's codes to {vs['url']}-site")
    if all(c.unverified for c in concepts):
        codes = ", ".join(f"{c.system.rsplit('/', 1)[-1]}|{c.code}" for c in concepts)
        return GateItem(name, vs["url"], title, f"only unverified codes ({codes}): confirm them, or list "
                        f"verified codes in {vs['url']}-site")
    return None


def gate_status(kb: KnowledgeBase, accept: tuple[str, ...] | list[str] = ()) -> GateStatus:
    """The gate for this knowledge; a name in `accept` that is not a marked value set is a
    ConfigurationError naming the setting (a typo must not silently accept nothing)."""
    marked = required_value_sets(kb)
    names = {a.strip() for a in accept if a.strip()}
    unknown = sorted(names - set(marked) - {ALL})
    if unknown:
        raise ConfigurationError(
            f"setting {SETTING}: {', '.join(unknown)} is not a treatment value set; "
            f"use 'all' or some of: {', '.join(sorted(marked)) or '(none marked)'}")
    items = [i for i in (_item(kb, n, vs) for n, vs in sorted(marked.items())) if i is not None]
    accepted = tuple(i for i in items if ALL in names or i.name in names)
    return GateStatus(open=tuple(i for i in items if i not in accepted), accepted=accepted,
                      required=tuple(sorted(marked)))


def gate_text(status: GateStatus) -> str:
    """The list `mm-cds terminology check` and the start-up logs show."""
    out = []
    if status.open:
        out.append("Go-live gate NOT met: treatment value sets with no code or only unverified codes "
                   f"(the production server refuses to start; accept explicitly with {SETTING}):")
        out += [f"  - {i.line()}" for i in status.open]
    if status.accepted:
        out.append(f"Go-live gate: accepted by {SETTING} (a documented site decision):")
        out += [f"  - {i.line()}" for i in status.accepted]
    if not status.open and not status.accepted:
        out.append(f"Go-live gate met: every treatment value set ({', '.join(status.required)}) has a verified code.")
    return "\n".join(out)
