"""mm-cds test, explain and catalogue --format html, as a user runs them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cds_service import cli, scenarios

ROOT = Path(__file__).resolve().parent.parent
FOLDER = scenarios.DEFAULT_FOLDER
SITE = ROOT / "examples" / "site"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_mm_cds_test_runs_the_bundled_scenarios_and_reports_each(capsys):
    code, out, _ = run(capsys, "test")
    total = len(scenarios.load_all([FOLDER]))
    assert code == 0, out[-3000:]
    assert out.rstrip().endswith(f"{total} passed, 0 failed")
    assert out.count("PASS  ") == total
    assert ("PASS  seq-1.yaml: SEQ-1 fires for a first teclistamab order\n"
            "      fired: ADM-5, SEQ-1 | expected: ADM-5, SEQ-1 | missing: - | unexpected: -") in out  # issue 13: ADM-5 at dose 1


@pytest.fixture()
def own_folder(tmp_path) -> Path:
    """A scenario folder of a user's own: the shared library, two scenarios, no site settings."""
    for library in FOLDER.glob("_library*.yaml"):  # every library file of the folder (issue 13: _library-n1.yaml)
        shutil.copy(library, tmp_path / library.name)
    (tmp_path / "mine.yaml").write_text("""
defaults: {hook: order-sign, baseChart: quiet-chart, baseDraftOrders: premedication, omit: [car-t-declined]}
scenarios:
  - name: wrong expectation on purpose
    draftOrders: [{use: teclistamab-order}]
    expect: [SEQ-1, SCR-1, ADM-5]
  - name: talquetamab known only by a site code
    draftOrders: [{use: talquetamab-order-local}]
    expect: [SEQ-1, ADM-5]
""")
    return tmp_path


def test_mm_cds_test_fails_with_missing_and_unexpected_codes_and_takes_a_site(capsys, own_folder):
    code, out, _ = run(capsys, "test", str(own_folder))
    assert code == 1
    assert "FAIL  mine.yaml: wrong expectation on purpose\n      fired: ADM-5, SEQ-1 | expected: ADM-5, SCR-1, SEQ-1 | missing: SCR-1 | unexpected: -" in out
    assert "FAIL  mine.yaml: talquetamab known only by a site code\n      fired: - | expected: ADM-5, SEQ-1 | missing: ADM-5, SEQ-1" in out
    assert out.rstrip().endswith("0 passed, 2 failed")
    code, out, _ = run(capsys, "test", str(own_folder), "--site", str(SITE))
    assert code == 1 and "PASS  mine.yaml: talquetamab known only by a site code" in out
    assert out.rstrip().endswith("1 passed, 1 failed")
    code, out, _ = run(capsys, "test", str(own_folder), "--site", str(SITE), "-k", "talquetamab")
    assert code == 0 and out.rstrip().endswith("1 passed, 0 failed")


def test_explain_a_scenario_in_process(capsys, own_folder):
    code, out, _ = run(capsys, "explain", str(FOLDER / "seq-1.yaml"), "does not fire after a cilta-cel administration")
    assert code == 0
    assert "mm-tcell-order-sign (order-sign)" in out
    assert "FIRED      SEQ-3  Bispecifics are effective after relapse on BCMA CAR-T  [info]" in out
    seq1 = re.split(r"\n  (?:FIRED|not fired)", out.split("not fired  SEQ-1")[1])[0]
    assert re.search(r"false +no prior CAR-T", seq1)
    assert re.search(r"true +a bispecific antibody is being ordered", seq1)
    assert re.search(r"\n  patient +prefetch +1 -> 1", out)  # data requirement: source, received, kept
    assert "Codes that matched no value set\n  (none)" in out
    # without the site, the local talquetamab code is what a site would need to map
    code, out, _ = run(capsys, "explain", str(own_folder / "mine.yaml"), "talquetamab")
    assert "http://example-hospital.org/fhir/CodeSystem/formulary|TALQ-40  (MedicationRequest.medication in draftOrders)" in out
    assert "not fired  SEQ-1" in out


def test_explain_against_a_running_service_and_from_a_request_file(capsys, loopback_service, tmp_path, kb):
    url = loopback_service(True)
    code, out, _ = run(capsys, "explain", str(FOLDER / "seq-1.yaml"), "SEQ-1 fires for a first teclistamab order",
                       "--url", url)
    assert code == 0, out
    assert "FIRED      SEQ-1  Consider CAR-T cell therapy before a bispecific antibody  [warning]" in out
    assert "suggests: Refer for CAR-T evaluation" in out
    # a request JSON file, in-process and against the service, tells the same
    from cds_service.service import scenario_request

    scenario = scenarios.find(FOLDER / "seq-1.yaml", "SEQ-1 fires for a first teclistamab order")
    import datetime as dt

    moved = scenario.as_of(dt.datetime.now(dt.timezone.utc).date())
    request = tmp_path / "request.json"
    request.write_text(json.dumps(scenario_request(moved, kb.services["mm-tcell-order-sign"].prefetch)))
    code, remote, _ = run(capsys, "explain", "--request", str(request), "--url", url)
    code_local, local, _ = run(capsys, "explain", "--request", str(request))
    assert code == code_local == 0
    strip_now = lambda text: re.sub(r"now \S+", "", text)  # noqa: E731
    assert strip_now(remote) == strip_now(local)
    # a service without explain: cards, and why there is no trace
    code, out, _ = run(capsys, "explain", "--request", str(request), "--url", loopback_service(False))
    assert code == 0 and "cards: ADM-5, SEQ-1" in out and "explain enabled (MM_CDS_EXPLAIN_ENABLED=1)" in out


def test_explain_says_what_is_wrong_with_its_arguments(capsys, tmp_path):
    code, _, err = run(capsys, "explain", str(FOLDER / "seq-1.yaml"), "no scenario has this name")
    assert code == 1 and "no scenario matching 'no scenario has this name'" in err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    code, _, err = run(capsys, "explain", "--request", str(bad))
    assert code == 1 and "not a CDS Hooks request" in err
    bad.write_text(json.dumps({"hook": "order-sign", "hookInstance": "x", "context": {"patientId": "p1"}}))
    code, _, err = run(capsys, "explain", "--request", str(bad))
    assert code == 1 and "the request is refused (400): context.userId: is required" in err


def test_catalogue_html_is_a_complete_page_listing_every_code(capsys, kb):
    code, out, _ = run(capsys, "catalogue", "--format", "html")
    assert code == 0
    assert out.startswith("<!doctype html>") and out.rstrip().endswith("</html>")
    assert "<title>mm-cds recommendation catalogue</title>" in out
    rows = re.findall(r"<tr><td>([A-Z]+-\d+)(?: \(in ([A-Z-]+)\))?</td>", out)
    codes = {c["code"] for c in kb.artifacts["https://myeloma-cds.example.org/fhir/CodeSystem/mm-tcell-recommendations"].resource["concept"]}
    bundles = set(re.findall(r"<tr><td>([A-Z-]+) \(bundle\)</td>", out))
    assert bundles == {"SCR", "INF-SC", "ADM-SU"}
    assert {code for code, _ in rows} | bundles == codes and len(codes - bundles) == 24 + 14  # v1 + the 14 issue-13 entries
    assert ("SCR-3", "SCR") in rows and ("INF-1", "INF-SC") in rows  # a member names its bundle
