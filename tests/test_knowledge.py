"""Knowledge loading: site directories replace by url (and say so), value set expansion."""

from __future__ import annotations

import json
import logging

from cds_service import config, knowledge

B = "https://myeloma-cds.example.org/fhir"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"


def load(*site_dirs):
    settings = config.load({"site_dirs": tuple(str(d) for d in site_dirs)})
    return knowledge.load(settings.directories, settings.canonical_base)


def write(directory, name, resource):
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(json.dumps(resource))


def test_a_site_value_set_replaces_the_shipped_companion_and_is_logged(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="cds_service.knowledge")
    site = tmp_path / "site"
    write(site, "linvo.json", {"resourceType": "ValueSet", "id": "linvoseltamab-site", "url": f"{B}/ValueSet/linvoseltamab-site",
                               "status": "active", "compose": {"include": [{"system": "urn:local", "concept": [{"code": "LINVO"}]}]}})
    kb = load(site)
    assert kb.terminology.get(f"{B}/ValueSet/bsab").contains("urn:local", "LINVO")
    assert kb.terminology.get(f"{B}/ValueSet/bcma-bsab").contains("urn:local", "LINVO")
    replaced = [r for r in caplog.records if getattr(r, "event", None) == "artifact_replaced"]
    assert [r.url for r in replaced] == [f"{B}/ValueSet/linvoseltamab-site"]
    assert replaced[0].by.endswith("linvo.json")
    # bispecifics are fetched unfiltered by code (NDC), and filtered here with the site code
    assert kb.services["mm-tcell-order-sign"].plan.requirements[2].code_filters[0].value_set.contains("urn:local", "LINVO")


def test_prefetch_templates_are_built_after_site_replacement(tmp_path):
    site = tmp_path / "site"
    write(site, "acv.json", {"resourceType": "ValueSet", "id": "acyclovir-site", "url": f"{B}/ValueSet/acyclovir-site",
                             "status": "active", "compose": {"include": [{"system": "urn:local", "concept": [{"code": "ACV-8"}]}]}})
    kb = load(site)
    service = kb.services["mm-tcell-order-sign"]
    requirement = next(r for r in service.plan.requirements if r.key == "hsvProphylaxisRequests")
    # the site's code is what the retrieve filters by (medication searches carry no code)
    assert any(cf.value_set is not None and cf.value_set.contains("urn:local", "ACV-8") for cf in requirement.code_filters)
    assert "code=" not in service.prefetch[requirement.derived_from or requirement.key]


def test_expansion_contains_and_exclude_are_honoured(tmp_path):
    site = tmp_path / "site"
    write(site, "tec.json", {"resourceType": "ValueSet", "id": "teclistamab-site", "url": f"{B}/ValueSet/teclistamab-site",
                             "status": "active", "expansion": {"timestamp": "2026-11-01T00:00:00Z", "contains": [
                                 {"system": "urn:local", "code": "TEC-A"},
                                 {"abstract": True, "code": "group", "contains": [{"system": "urn:local", "code": "TEC-B"}]}]}})
    write(site, "narrow.json", {"resourceType": "ValueSet", "id": "narrow", "url": f"{B}/ValueSet/narrow", "status": "active",
                                "compose": {"include": [{"valueSet": [f"{B}/ValueSet/teclistamab"]}],
                                            "exclude": [{"system": RX, "concept": [{"code": "2619444"}]}]}})
    kb = load(site)
    tec = kb.terminology.get(f"{B}/ValueSet/teclistamab")
    assert tec.contains("urn:local", "TEC-A") and tec.contains("urn:local", "TEC-B")
    narrow = kb.terminology.get(f"{B}/ValueSet/narrow")
    assert narrow.contains(RX, "2619432") and not narrow.contains(RX, "2619444")


def test_concepts_listed_without_display_take_the_code_system_display(kb):
    recs = kb.terminology.get(f"{B}/ValueSet/override-common")
    assert {c.display for c in recs.concepts} == {"Not appropriate for this patient (document reason)", "Already done elsewhere"}


def test_unverified_codes_carry_their_marker(kb):
    cilta = kb.terminology.get(f"{B}/ValueSet/cilta-cel")
    marked = {c.code: c.unverified for c in cilta.concepts}
    assert marked["XW033A7"] is False and marked["2594780"] is True
    assert all(c.source for c in cilta.concepts)
