"""The catalogue as shipped: complete, documented, consistent, and covered by scenarios."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cds_service import knowledge

ROOT = Path(__file__).resolve().parent.parent
B = "https://myeloma-cds.example.org/fhir"
RECOMMENDATIONS = f"{B}/CodeSystem/mm-tcell-recommendations"
SHARED = ("INF-1", "INF-2", "INF-3", "INF-4", "TOX-1")


def codes_of_codesystem(kb) -> set[str]:
    cs = kb.artifacts[RECOMMENDATIONS].resource
    return {c["code"] for c in cs["concept"]}


def test_every_recommendation_of_the_catalogue_is_an_action(kb):
    assert len(codes_of_codesystem(kb)) == 24
    assert {e.code for e in knowledge.entries(kb)} == codes_of_codesystem(kb)


def test_the_readme_tables_are_generated_from_the_artifacts(kb):
    readme = ROOT / "docs" / "catalogue.md"
    assert knowledge.readme_is_fresh(readme, kb), "README is stale: run `mm-cds readme --update`"


def test_the_readme_check_fails_when_an_artifact_changes(kb, tmp_path):
    stale = tmp_path / "README.md"
    text = (ROOT / "docs" / "catalogue.md").read_text().replace("Consider CAR-T cell therapy before a bispecific antibody |", "Old title |", 1)
    stale.write_text(text)
    assert not knowledge.readme_is_fresh(stale, kb)
    done = subprocess.run([sys.executable, "-m", "cds_service", "readme", "--check", "--file", str(stale)],
                          capture_output=True, text=True, env={"MM_CDS_LOG_LEVEL": "ERROR", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "stale" in done.stderr


def _action(kb, plan_id: str, code: str) -> dict:
    plan = kb.artifacts[f"{B}/PlanDefinition/{plan_id}"].resource
    return next(a for a in plan["action"] if a["code"][0]["coding"][0]["code"] == code)


@pytest.mark.parametrize("code", SHARED)
def test_cards_in_both_services_say_the_same(kb, code):
    order, chart = _action(kb, "mm-tcell", code), _action(kb, "mm-tcell-chart", code)
    for element in ("title", "description", "priority", "documentation", "dynamicValue", "selectionBehavior", "action", "extension"):
        assert order.get(element) == chart.get(element), f"{code}: {element} differs between the two PlanDefinitions"
    assert order["condition"][1:] == chart["condition"][1:], f"{code}: only the first (trigger) condition may differ"


def test_every_warning_and_critical_card_offers_the_common_override_reasons(kb):
    for plan in kb.plans.values():
        for action in plan.actions:
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
    for code in sorted(codes_of_codesystem(kb)):
        assert fires[code] >= 1, f"{code} never fires in a scenario"
        assert misses[code] >= 2, f"{code} has {misses[code]} near misses; at least 2 are needed"


def _terminology(*args: str, site: str | None = None) -> subprocess.CompletedProcess:
    env = {"MM_CDS_LOG_LEVEL": "ERROR", "PATH": "/usr/bin:/bin"}
    if site:
        env["MM_CDS_SITE_DIRS"] = site
    return subprocess.run([sys.executable, "-m", "cds_service", "terminology", *args], capture_output=True, text=True, env=env)


def test_terminology_check_lists_what_to_map_and_what_the_site_mapped():
    shipped = _terminology("check")
    assert shipped.returncode == 0
    assert "Talquetamab: https://myeloma-cds.example.org/fhir/ValueSet/talquetamab-site" in shipped.stdout
    assert "http://www.nlm.nih.gov/research/umls/rxnorm|2594780" in shipped.stdout  # cilta-cel, recalled
    assert "http://loinc.org|2465-3" not in shipped.stdout  # IgG is verified
    with_site = _terminology("check", site=str(ROOT / "examples" / "site"))
    assert "Talquetamab: 2 code(s)" in with_site.stdout
    assert "talquetamab-site" not in with_site.stdout.split("Codes not verified")[0]
    def count(text):
        return int(text.strip().rsplit("\n", 1)[-1].split()[0])
    assert count(with_site.stdout) == count(shipped.stdout) - 3


def test_terminology_check_strict_fails_while_items_are_open():
    assert _terminology("check", "--strict").returncode == 1
