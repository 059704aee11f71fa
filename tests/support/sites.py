"""Site directories made by tests."""

from __future__ import annotations

import json
from pathlib import Path

from cds_service.knowledge import KnowledgeBase

PLAN = "https://myeloma-cds.example.org/fhir/PlanDefinition/mm-tcell"


def oversized_summary_site(directory: Path, kb: KnowledgeBase, code: str = "SEQ-1") -> Path:
    """A site whose copy of the shipped PlanDefinition gives the `code` card a 150-character
    summary: a card the 2.0 response schema refuses (the service must drop it)."""
    directory.mkdir()
    plan = json.loads(Path(kb.plans[PLAN].file).read_text())
    action = next(a for a in plan["action"] if a["code"][0]["coding"][0]["code"] == code)
    action["dynamicValue"] = [{"path": "title", "expression": {"language": "text/fhirpath",
                                                               "expression": "'" + "y" * 150 + "'"}}]
    (directory / "PlanDefinition-mm-tcell.json").write_text(json.dumps(plan))
    return directory
