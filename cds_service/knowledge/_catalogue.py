"""The recommendation catalogue and the terminology status, generated from the artifacts.

Both are rendered as Markdown for the README (between generated-section markers, kept
fresh by `mm-cds readme --update` and checked by a test) and as plain data for the CLI.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from cds_service.knowledge._load import KnowledgeBase
from cds_service.knowledge._model import CardAction

HOOK_ORDER = ("order-select", "order-sign", "patient-view")


@dataclass(frozen=True)
class Entry:
    code: str
    title: str
    hooks: tuple[str, ...]
    indicator: str
    fires_when: tuple[str, ...]
    suggestions: tuple[str, ...]
    sources: tuple[str, ...]
    plan: str
    members: tuple[str, ...] = ()  # a bundled card: its member codes (the entries after it)
    bundle: str | None = None  # a member: the code of the bundle that shows it
    evidence: tuple[str, ...] = ()  # the evidence marks its sources and text carry
    armed: str = "yes"  # D-11: "yes", "no: why", or "not for: names"

    @property
    def label(self) -> str:
        """The code cell: a bundle says so, a member names its bundle."""
        if self.members:
            return f"{self.code} (bundle)"
        return f"{self.code} (in {self.bundle})" if self.bundle else self.code


_SEED_LABELS = ("EMN", "IMWG", "Song", "Ouyang")


def _evidence(action: CardAction) -> tuple[str, ...]:
    """The marks of RECOMMENDATIONS-v2 section 0, read from the action's data: [seed] for a
    seed source cited, [consensus] for the bispecific-antibody consensus, [label] for a
    prescribing-information citation, [recalled] where the text or a variable says "per
    local policy" or [recalled]."""
    marks = []
    labels = [c.label for c in action.citations]
    if any(label.startswith(_SEED_LABELS) for label in labels):
        marks.append("[seed]")
    if any("consensus" in label.lower() for label in labels):
        marks.append("[consensus]")
    if any(label.endswith(" label") or "prescribing" in label.lower() for label in labels):
        marks.append("[label]")
    texts = [action.description or ""] + [e.source for _, e in action.dynamic] + [v.expression.source for v in action.variables]
    if any("per local policy" in t or "[recalled]" in t for t in texts):
        marks.append("[recalled]")
    return tuple(marks)


def _armed(action: CardAction) -> str:
    if action.unarmed:
        return "no: " + "; ".join(action.unarmed)
    return f"not for {', '.join(action.not_armed_for)}" if action.not_armed_for else "yes"


def _entry(action: CardAction, plan: str, bundle: CardAction | None = None) -> Entry:
    fires = [c.description or c.expression.source for c in action.conditions]
    if action.is_bundle:
        fires.append("at least one member fires: " + ", ".join(action.codes))
    return Entry(
        code=action.code.get("code", ""),
        title=action.title,
        hooks=tuple(h for h in HOOK_ORDER if h in action.hooks),
        indicator="highest fired member's" if action.is_bundle else action.indicator,
        fires_when=tuple(fires),
        suggestions=tuple(s.title for s in action.suggestions),
        sources=tuple(c.label for c in action.citations),
        plan=plan,
        members=action.codes if action.is_bundle else (),
        bundle=bundle.code.get("code", "") if bundle is not None else None,
        evidence=_evidence(action),
        armed=_armed(action),
    )


def entries(kb: KnowledgeBase) -> list[Entry]:
    """Every action, in code order; a bundle is followed by its members, in plan order."""
    groups = []
    for plan in kb.plans.values():
        for action in plan.actions:
            group = [_entry(action, plan.id)] + [_entry(m, plan.id, action) for m in action.members]
            groups.append(group)
    groups.sort(key=lambda g: (_code_key(g[0].code), HOOK_ORDER.index(g[0].hooks[0]) if g[0].hooks else 0))
    return [e for group in groups for e in group]


def _code_key(code: str) -> tuple:
    prefix, _, number = code.partition("-")
    order = ["SEQ", "SCR", "INF", "ADM", "MON", "TOX"]
    return (order.index(prefix) if prefix in order else len(order), int(number) if number.isdigit() else 0, code)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def catalogue_markdown(kb: KnowledgeBase) -> str:
    lines = [
        "| code | hooks | card | indicator | fires when (all of) | suggests | sources | evidence | armed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries(kb):
        lines.append("| " + " | ".join(_cell(x) for x in (
            e.label, ", ".join(e.hooks), e.title, e.indicator, "; ".join(e.fires_when),
            "; ".join(e.suggestions) or "-", "; ".join(e.sources), " ".join(e.evidence) or "-", e.armed)) + " |")
    codes, actions = counts(kb)
    lines.append("")
    lines.append(f"{codes} recommendations in {actions} PlanDefinition actions.")
    bundles = [e for e in entries(kb) if e.members]
    if bundles:
        lines.append("")
        lines.append("Bundled cards (one card listing the members that fired): " + "; ".join(
            f"{e.code} ({', '.join(e.hooks)}): {', '.join(e.members)}" for e in bundles) + ".")
    return "\n".join(lines)


def catalogue_table_html(kb: KnowledgeBase) -> str:
    """The catalogue as an HTML table (the "try it" page embeds it)."""
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in (
            e.label, ", ".join(e.hooks), e.title, e.indicator, "; ".join(e.fires_when),
            "; ".join(e.suggestions) or "-", "; ".join(e.sources), " ".join(e.evidence) or "-", e.armed)) + "</tr>"
        for e in entries(kb)
    )
    return ("<table class=\"catalogue\"><thead><tr><th>code</th><th>hooks</th><th>card</th><th>indicator</th>"
            "<th>fires when (all of)</th><th>suggests</th><th>sources</th><th>evidence</th><th>armed</th></tr></thead>\n<tbody>\n"
            f"{rows}\n</tbody></table>")


def counts(kb: KnowledgeBase) -> tuple[int, int]:
    """(recommendation codes, PlanDefinition actions): a bundle's topic is not a
    recommendation of its own (its members are), but it is an action."""
    rows = entries(kb)
    return len({e.code for e in rows if not e.members}), len(rows)


def catalogue_html(kb: KnowledgeBase) -> str:
    """A complete standalone HTML page: `mm-cds catalogue --format html > catalogue.html`."""
    codes, actions = counts(kb)
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>mm-cds recommendation catalogue</title>\n<style>\n"
            "body { font-family: system-ui, sans-serif; margin: 1.5rem; }\n"
            "table { border-collapse: collapse; font-size: 0.85rem; }\n"
            "th, td { border: 1px solid #ccd; padding: 0.25rem 0.4rem; text-align: left; vertical-align: top; }\n"
            "th { background: #eef1f5; }\n</style>\n</head>\n<body>\n"
            "<h1>mm-cds recommendation catalogue</h1>\n"
            f"<p>{codes} recommendations in {actions} PlanDefinition actions, generated from the artifacts.</p>\n"
            f"{catalogue_table_html(kb)}\n</body>\n</html>")


# -- terminology ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VsStatus:
    url: str
    title: str
    codes: int
    unverified: tuple[tuple[str, str, str], ...]  # (system, code, note)
    site_codes: int
    has_site_companion: bool

    @property
    def status(self) -> str:
        if self.codes == 0:
            return "no code: site must map" if self.site_codes == 0 else "site codes only"
        if self.unverified:
            return f"{len(self.unverified)} unverified"
        return "verified"


def terminology_status(kb: KnowledgeBase) -> list[VsStatus]:
    """Every value set that lists codes (or should): drugs, labs, conditions, vaccines.

    Grouping value sets (only other value sets included, e.g. "bsab") are left out: their
    codes are reported once, where they are defined.
    """
    result = []
    for artifact in kb.artifacts.values():
        vs = artifact.resource
        if vs["resourceType"] != "ValueSet" or vs["url"].endswith("-site") or "/override-" in vs["url"]:
            continue
        includes = (vs.get("compose") or {}).get("include", [])
        direct = {(inc["system"], c["code"]) for inc in includes if inc.get("system") for c in inc.get("concept", [])}
        nested = [u for inc in includes for u in inc.get("valueSet", []) if not u.endswith("-site")]
        if nested and not direct:
            continue
        expanded = kb.terminology.get(vs["url"])
        companion = kb.terminology.get(vs["url"] + "-site")
        own = [c for c in expanded.concepts if (c.system, c.code) in direct] if expanded else []
        result.append(VsStatus(
            url=vs["url"],
            title=vs.get("title") or vs.get("name") or vs["id"],
            codes=len(own),
            unverified=tuple((c.system, c.code, c.source or "") for c in own if c.unverified),
            site_codes=len(companion.concepts) if companion is not None else 0,
            has_site_companion=companion is not None,
        ))
    return sorted(result, key=lambda s: s.title.lower())


def terminology_markdown(kb: KnowledgeBase) -> str:
    lines = ["| value set | shipped codes | unverified | site codes | status |", "|---|---|---|---|---|"]
    for s in terminology_status(kb):
        unverified = ", ".join(code for _, code, _ in s.unverified) or "-"
        site = str(s.site_codes) if s.has_site_companion else "n/a"
        lines.append(f"| {_cell(s.title)} (`{s.url.rsplit('/', 1)[-1]}`) | {s.codes} | {unverified} | {site} | {s.status} |")
    return "\n".join(lines)


def terminology_check_text(kb: KnowledgeBase) -> tuple[str, int]:
    """The go-live list: unverified codes, and concepts with no code; and how many."""
    statuses = terminology_status(kb)
    out, open_items = [], 0
    unmapped = [s for s in statuses if s.codes == 0 and s.site_codes == 0]
    if unmapped:
        out.append("Concepts with no code: add the site's codes to the companion value set (url + '-site'):")
        for s in unmapped:
            out.append(f"  - {s.title}: {s.url}-site")
        open_items += len(unmapped)
    unverified = [(s, u) for s in statuses for u in s.unverified]
    if unverified:
        out.append("Codes not verified offline: confirm against RxNav/VSAC before clinical use:")
        for s, (system, code, _) in unverified:
            out.append(f"  - {s.title}: {system}|{code}")
        open_items += len(unverified)
    mapped = [s for s in statuses if s.site_codes]
    if mapped:
        out.append("Site codes loaded:")
        for s in mapped:
            out.append(f"  - {s.title}: {s.site_codes} code(s)")
    if not open_items:
        out.append("Every concept has a verified code.")
    return "\n".join(out), open_items


# -- README sections ----------------------------------------------------------------------------

SECTIONS = {"catalogue": catalogue_markdown, "terminology": terminology_markdown}


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN GENERATED: {name} (mm-cds readme --update) -->", f"<!-- END GENERATED: {name} -->")


def render_readme(text: str, kb: KnowledgeBase) -> str:
    """The README with every generated section replaced by a fresh rendering."""
    for name, render in SECTIONS.items():
        begin, end = _markers(name)
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"README lacks the markers of the generated section '{name}'")
        text = text[: start + len(begin)] + "\n" + render(kb) + "\n" + text[stop:]
    return text


def readme_is_fresh(path: Path, kb: KnowledgeBase) -> bool:
    text = path.read_text()
    return render_readme(text, kb) == text
