"""Every deliberately broken artifact in tests/broken/ stops start-up with its message."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cds_service import config, create_app, knowledge
from cds_service.errors import KnowledgeError

BROKEN = Path(__file__).parent / "broken"
CASES = yaml.safe_load((BROKEN / "expected.yaml").read_text())


def _load_with(site: Path):
    settings = config.load({"site_dirs": (str(site),)})
    return knowledge.load(settings.directories, settings.canonical_base)


@pytest.mark.parametrize("case", sorted(CASES), ids=sorted(CASES))
def test_broken_artifact_is_refused_with_file_resource_element_and_message(case):
    expected = CASES[case]
    with pytest.raises(KnowledgeError) as info:
        _load_with(BROKEN / case)
    matching = [
        p for p in info.value.problems
        if p.file.endswith(expected["file"]) and p.resource == expected["resource"]
        and p.element == expected["element"] and expected["message"] in p.message
    ]
    assert matching, "no problem matched; got:\n" + "\n".join(map(str, info.value.problems))
    assert str(matching[0]) in str(info.value)


def test_every_broken_folder_has_an_expectation():
    folders = {p.name for p in BROKEN.iterdir() if p.is_dir()}
    assert folders == set(CASES)


def test_shipped_knowledge_loads_clean(kb):
    assert {"mm-tcell-order-select", "mm-tcell-order-sign", "mm-tcell-chart"} <= set(kb.services)


def test_create_app_refuses_to_start_on_a_broken_artifact():
    with pytest.raises(KnowledgeError) as info:
        create_app({"site_dirs": (str(BROKEN / "malformed-fhirpath"),)})
    assert "PlanDefinition-bad-path.json" in str(info.value)


@pytest.mark.slow  # its own process: the exit status of `mm-cds serve` is the point
def test_serve_command_exits_non_zero_naming_the_file():
    env = {"MM_CDS_SITE_DIRS": str(BROKEN / "no-trigger"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "cds_service", "serve", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "PlanDefinition-no-trigger.json: PlanDefinition/no-trigger: PlanDefinition.action[0].trigger: has no trigger" in done.stderr


def test_all_problems_are_reported_together(tmp_path):
    for case in ("unknown-variable", "unknown-function"):
        for f in (BROKEN / case).iterdir():
            (tmp_path / f.name).write_text(f.read_text())
    with pytest.raises(KnowledgeError) as info:
        _load_with(tmp_path)
    assert len(info.value.problems) == 2


def test_a_crd_date_token_in_a_query_pattern_is_refused_unless_prefetch_date_tokens(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(BROKEN / "unsupported-prefetch-token", site)
    library = site / "Library-bad-token.json"
    library.write_text(library.read_text().replace(
        "Encounter/{{context.encounterId.resolve()}}", "Encounter?patient={{context.patientId}}&date=ge{{today() - 30 days}}"))
    settings = config.load({"site_dirs": (str(site),)})
    with pytest.raises(KnowledgeError) as info:
        knowledge.load(settings.directories, settings.canonical_base)
    assert "is a Da Vinci CRD extension, not CDS Hooks 2.0" in str(info.value)
    kb = knowledge.load(settings.directories, settings.canonical_base, date_tokens=True)
    assert any("{{today() - 30 days}}" in t for s in kb.services.values() for t in s.prefetch.values())
