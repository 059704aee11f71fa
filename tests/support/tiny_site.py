"""A one-action site (a Library of data requirements and a PlanDefinition reading them all)
written from a compact description, for the query-sharing and retrieve tables."""

from __future__ import annotations

import json
from pathlib import Path

from cds_service import knowledge

B = "https://myeloma-cds.example.org/fhir"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SYSTEM = {"MedicationAdministration": RXNORM, "Observation": LOINC, "Procedure": "http://snomed.info/sct"}
CODE_PATH = {"MedicationAdministration": "medication", "Observation": "code", "Procedure": "code"}
DATE_PATH = {"MedicationAdministration": "effective", "Observation": "effective", "Procedure": "performed"}


def data_requirement(spec: dict) -> dict:
    """{id, type, codes | valueSet, status, days | period, datePath, searchParam, limit} -> dataRequirement."""
    kind = spec.get("type", "MedicationAdministration")
    filters = []
    if "codes" in spec:
        filters.append({"path": CODE_PATH[kind], "code": [{"system": SYSTEM[kind], "code": c} for c in spec["codes"]]})
    if "valueSet" in spec:
        filters.append({"path": CODE_PATH[kind], "valueSet": f"{B}/ValueSet/{spec['valueSet']}"})
    if "status" in spec:
        filters.append({"path": "status", "code": [{"code": s} for s in spec["status"]]})
    dr: dict = {"id": spec["id"], "type": kind, "codeFilter": filters}
    path = spec.get("datePath", DATE_PATH[kind])
    search = {"searchParam": spec["searchParam"]} if "searchParam" in spec else {}
    if "days" in spec:
        dr["dateFilter"] = [{"path": path, **search, "valueDuration": {"value": spec["days"], "unit": "days",
                                                             "system": "http://unitsofmeasure.org", "code": "d"}}]
    if "period" in spec:
        dr["dateFilter"] = [{"path": path, **search, "valuePeriod": dict(spec["period"])}]
    if "limit" in spec:
        dr["limit"] = spec["limit"]
    return dr


def value_set(name: str, system: str, codes: list[str]) -> dict:
    return {"resourceType": "ValueSet", "id": name, "url": f"{B}/ValueSet/{name}", "status": "active",
            "compose": {"include": [{"system": system, "concept": [{"code": c} for c in codes]}]}}


def load(directory: Path, requirements: list[dict], value_sets: dict[str, list[str]] | None = None,
         hook: str = "order-sign") -> knowledge.Service:
    """Write the site to `directory`, load it alone, and return its one service."""
    directory.mkdir(parents=True, exist_ok=True)
    reqs = [data_requirement(r) for r in requirements]
    for name, codes in (value_sets or {}).items():
        (directory / f"ValueSet-{name}.json").write_text(json.dumps(value_set(name, RXNORM, codes)))
    library = {"resourceType": "Library", "id": "t", "url": f"{B}/Library/t", "status": "active",
               "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type",
                                    "code": "logic-library"}]},
               "dataRequirement": reqs}
    condition = " or ".join(f"%{r['id']}.exists()" for r in reqs)
    plan = {"resourceType": "PlanDefinition", "id": "t", "url": f"{B}/PlanDefinition/t", "status": "active",
            "library": [f"{B}/Library/t"],
            "action": [{"title": "T", "code": [{"coding": [{"system": f"{B}/CodeSystem/mm-tcell-recommendations",
                                                            "code": "SEQ-1"}]}],
                        "trigger": [{"type": "named-event", "name": hook}],
                        "condition": [{"kind": "applicability",
                                       "expression": {"language": "text/fhirpath", "expression": condition}}]}]}
    (directory / "Library-t.json").write_text(json.dumps(library))
    (directory / "PlanDefinition-t.json").write_text(json.dumps(plan))
    kb = knowledge.load([directory], B)
    [service] = kb.services.values()
    return service
