"""The catalogue as shipped: complete, documented, consistent, and covered by scenarios."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cds_service import cli, knowledge

ROOT = Path(__file__).resolve().parent.parent
B = "https://myeloma-cds.example.org/fhir"
RECOMMENDATIONS = f"{B}/CodeSystem/mm-tcell-recommendations"
SHARED = ("INF-1", "INF-2", "INF-3", "INF-4", "INF-9", "INF-11", "TOX-1")


def codes_of_codesystem(kb) -> set[str]:
    cs = kb.artifacts[RECOMMENDATIONS].resource
    return {c["code"] for c in cs["concept"]}


def test_every_recommendation_of_the_catalogue_is_an_action(kb):
    bundles = {e.code for e in knowledge.entries(kb) if e.members}
    assert bundles == {"SCR", "INF-SC", "ADM-SU"}  # RECOMMENDATIONS-v2 Part 2: topics, not recommendations
    assert len(codes_of_codesystem(kb) - bundles) == 24 + 14  # v1 (24) + issue 13: SEQ-6, SEQ-7, SCR-5..7, INF-9, INF-10, INF-11, ADM-4, ADM-5, MON-3, TOX-3, TOX-4, TOX-5
    assert {e.code for e in knowledge.entries(kb)} == codes_of_codesystem(kb)


def test_the_readme_tables_are_generated_from_the_artifacts(kb):
    readme = ROOT / "docs" / "catalogue.md"
    assert knowledge.readme_is_fresh(readme, kb), "README is stale: run `mm-cds readme --update`"


def mm_cds(monkeypatch, capsys, *args: str, site: str | None = None, accept: str | None = None) -> tuple[int, str, str]:
    """`mm-cds ARGS` in this process with no MM_CDS_* setting but the site directories and
    the go-live acceptance: (exit status, stdout, stderr)."""
    for name in os.environ:
        if name.startswith("MM_CDS_") and name != "MM_CDS_DATA_DIR":
            monkeypatch.delenv(name)
    if site:
        monkeypatch.setenv("MM_CDS_SITE_DIRS", site)
    if accept:
        monkeypatch.setenv("MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES", accept)
    capsys.readouterr()
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_readme_check_fails_when_an_artifact_changes(kb, tmp_path, monkeypatch, capsys):
    stale = tmp_path / "README.md"
    text = (ROOT / "docs" / "catalogue.md").read_text().replace("Consider CAR-T cell therapy before a bispecific antibody |", "Old title |", 1)
    stale.write_text(text)
    assert not knowledge.readme_is_fresh(stale, kb)
    status, out, err = mm_cds(monkeypatch, capsys, "readme", "--check", "--file", str(stale))
    assert status == 1 and out == ""
    assert err == f"{stale}: generated sections are stale; run `mm-cds readme --update`\n"
    status, out, _ = mm_cds(monkeypatch, capsys, "readme", "--check")  # the default: docs/catalogue.md
    assert status == 0 and out == f"{ROOT / 'docs' / 'catalogue.md'}: generated sections are up to date\n"


def _action(kb, plan_id: str, code: str) -> dict:
    """The action with the code: a top-level card or a bundle's member."""
    plan = kb.artifacts[f"{B}/PlanDefinition/{plan_id}"].resource
    actions = [m for a in plan["action"] for m in (a, *a.get("action", [])) if m.get("code")]
    return next(a for a in actions if a["code"][0]["coding"][0]["code"] == code)


@pytest.mark.parametrize("code", SHARED)
def test_cards_in_both_services_say_the_same(kb, code):
    order, chart = _action(kb, "mm-tcell", code), _action(kb, "mm-tcell-chart", code)
    for element in ("title", "description", "priority", "documentation", "dynamicValue", "selectionBehavior", "action", "extension"):
        assert order.get(element) == chart.get(element), f"{code}: {element} differs between the two PlanDefinitions"
    assert order["condition"][1:] == chart["condition"][1:], f"{code}: only the first (trigger) condition may differ"


def test_every_warning_and_critical_card_offers_the_common_override_reasons(kb):
    for plan in kb.plans.values():  # a bundle offers the union of its members' reasons
        for action in (m for a in plan.actions for m in (a.members or (a,))):
            if action.indicator in ("warning", "critical"):
                displays = {r["display"] for r in action.override_reasons}
                assert {"Not appropriate for this patient (document reason)", "Already done elsewhere"} <= displays, action.code


def test_every_card_cites_a_source(kb):
    for plan in kb.plans.values():
        for action in plan.actions:
            assert action.citations, action.code
            doi = [c for c in action.citations if c.url]
            labels_only = all(c.label == "US prescribing information" for c in action.citations if not c.url)
            assert doi or labels_only, action.code


def _scenarios():
    for path in sorted((ROOT / "tests" / "scenarios").glob("[!_]*.yaml")):
        yield from yaml.safe_load(path.read_text())["scenarios"]


def test_each_recommendation_has_a_firing_scenario_and_two_near_misses(kb):
    fires, misses = Counter(), Counter()
    for entry in _scenarios():
        expected = set(entry.get("expect") or [])
        for code in expected:
            fires[code] += 1
        named = entry["name"].split(" ", 1)[0]
        if named not in expected:
            misses[named] += 1
    bundles = {e.code for e in knowledge.entries(kb) if e.members}  # a bundle's topic: scenarios name its members
    for code in sorted(codes_of_codesystem(kb) - bundles):
        assert fires[code] >= 1, f"{code} never fires in a scenario"
        assert misses[code] >= 2, f"{code} has {misses[code]} near misses; at least 2 are needed"


def test_terminology_check_lists_what_to_map_and_what_the_site_mapped(monkeypatch, capsys):
    status, shipped, _ = mm_cds(monkeypatch, capsys, "terminology", "check")
    assert status == 1  # the go-live gate: linvoseltamab has no code, talquetamab only unverified ones
    assert "Linvoseltamab: https://myeloma-cds.example.org/fhir/ValueSet/linvoseltamab-site" in shipped
    assert "Talquetamab: http://www.nlm.nih.gov/research/umls/rxnorm|2644447" in shipped  # a public copy, unverified
    assert "http://www.nlm.nih.gov/research/umls/rxnorm|2594780" in shipped  # cilta-cel, recalled
    assert "http://loinc.org|2465-3" not in shipped  # IgG is verified
    status, with_site, _ = mm_cds(monkeypatch, capsys, "terminology", "check", site=str(ROOT / "examples" / "site"),
                                  accept="linvoseltamab")  # the example site maps talquetamab only
    assert status == 0
    assert "Talquetamab: 2 code(s)" in with_site
    assert "talquetamab-site" not in with_site.split("Codes not verified")[0]
    # immune globulin, sulfonamide allergy, atovaquone and dapsone were unmapped; talquetamab's
    # site codes leave its unverified RxNorm codes listed (they still need confirming)
    assert open_items(with_site) == open_items(shipped) - 4


def open_items(text: str) -> int:
    last = text.strip().rsplit("\n", 1)[-1]
    assert last.endswith(" item(s) to confirm or map before go-live."), last
    return int(last.split()[0])


def test_terminology_check_strict_fails_while_items_are_open(monkeypatch, capsys):
    status, out, _ = mm_cds(monkeypatch, capsys, "terminology", "check", "--strict")
    assert status == 1 and open_items(out) > 0


def test_the_catalogue_shows_evidence_marks_and_which_rules_are_armed(kb):
    rows = {line.split(" | ")[0].lstrip("| "): line for line in knowledge.catalogue_markdown(kb).splitlines()
            if line.startswith("| ") and not line.startswith("| code")}
    assert rows["ADM-4"].endswith("| not for elranatamab, linvoseltamab |")  # empty restart tables (D-11)
    assert rows["SEQ-1"].endswith("| [seed] | yes |")
    assert "[consensus]" in rows["INF-5"] and "[label]" in rows["INF-6"]
    assert "[recalled]" in rows["INF-8"]  # the season dates are per local policy
