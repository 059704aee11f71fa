"""`mm-cds export-patients`: the scenario patients as FHIR transaction Bundles, for a real
FHIR server (the docker-compose loader posts them to HAPI).

Each scenario becomes one patient with its own id (`{file}-{n}`, e.g. `seq-1-03`); its chart
resources get ids prefixed with it and their references rewritten, so patients never
collide on a shared server. Dates are moved so that the scenario's `now` is today (or
--as-of): a service with a real clock, fetching from the server, gives the cards the
scenario expects. Beside each Bundle, `{id}.request.json` is the CDS Hooks request an EHR
would send for it (no prefetch; fhirServer = --fhir-server), and index.json lists them all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from cds_service import scenarios
from cds_service.scenarios import patient_id

_MAX_ID = 64  # FHIR id: [A-Za-z0-9-.]{1,64}


def export(scenario: scenarios.Scenario, pid: str, fhir_server: str) -> tuple[dict, dict]:
    """(transaction Bundle of the chart, CDS Hooks request) for one scenario's patient."""
    ids = {(r["resourceType"], r["id"]): (pid if r["resourceType"] == "Patient" else f"{pid}-{r['id']}"[:_MAX_ID])
           for r in scenario.chart}
    ids[("Patient", scenario.patient)] = pid
    chart = [{**_rewrite(r, ids), "id": ids[(r["resourceType"], r["id"])]} for r in scenario.chart]
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in chart]}
    context = _rewrite(scenario.context(), ids)
    context["patientId"] = pid
    if scenario.encounter:
        context["encounterId"] = ids.get(("Encounter", scenario.encounter), scenario.encounter)
    request = {"hook": scenario.hook, "hookInstance": str(uuid.uuid4()), "fhirServer": fhir_server, "context": context}
    return bundle, request


def _rewrite(value: Any, ids: dict[tuple[str, str], str]) -> Any:
    """A copy with every reference "Type/id" to an exported resource pointing at its new id."""
    if isinstance(value, dict):
        out = {k: _rewrite(v, ids) for k, v in value.items()}
        ref = value.get("reference")
        if isinstance(ref, str) and ref.count("/") == 1 and tuple(ref.split("/")) in ids:
            kind = ref.split("/")[0]
            out["reference"] = f"{kind}/{ids[(kind, ref.split('/')[1])]}"
        return out
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return value


def export_all(paths: list[Path], today: dt.date, fhir_server: str) -> list[tuple[str, scenarios.Scenario, dict, dict]]:
    out = []
    for file in scenarios.scenario_files(paths):
        for index, scenario in enumerate(scenarios.load_file(file), start=1):
            pid = patient_id(scenario, index)
            bundle, request = export(scenario.as_of(today), pid, fhir_server)
            out.append((pid, scenario, bundle, request))
    return out


def wait_for(base: str, seconds: float) -> None:
    """Until the FHIR server answers its CapabilityStatement (it may still be starting)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{base}/metadata", timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base} did not answer /metadata within {seconds:.0f}s")
        time.sleep(3)


# -- mm-cds export-patients ---------------------------------------------------------------------


def register_cli(sub: argparse._SubParsersAction) -> dict[str, Any]:
    cmd = sub.add_parser("export-patients", help="scenario patients as FHIR transaction Bundles (files or POSTed)")
    cmd.add_argument("paths", nargs="*", type=Path, default=[scenarios.DEFAULT_FOLDER],
                     help="scenario files or folders (default: the shipped scenarios, tests/scenarios in a checkout)")
    cmd.add_argument("--out", type=Path, help="write {id}.json, {id}.request.json and index.json here")
    cmd.add_argument("--post", metavar="FHIR_BASE", help="POST each transaction Bundle to this FHIR server")
    cmd.add_argument("--wait", type=float, default=0, help="seconds to wait for --post's server to come up")
    cmd.add_argument("--fhir-server", default="http://hapi:8080/fhir",
                     help="fhirServer written into the example requests (default: the compose HAPI)")
    cmd.add_argument("--as-of", type=dt.date.fromisoformat, help="the day the scenarios' `now` moves to (default: today)")
    return {"export-patients": _cli}


def _cli(args: argparse.Namespace) -> int:
    if not args.out and not args.post:
        print("mm-cds export-patients: give --out DIR, --post FHIR_BASE, or both", file=sys.stderr)
        return 2
    today = args.as_of or dt.datetime.now(dt.timezone.utc).date()
    exported = export_all(args.paths, today, args.fhir_server)
    if args.out:
        _write(args.out, exported)
        print(f"{len(exported)} patients written to {args.out}")
    if args.post:
        return _post(args.post.rstrip("/"), exported, args.wait)
    return 0


def _write(folder: Path, exported: list[tuple[str, scenarios.Scenario, dict, dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for pid, scenario, bundle, request in exported:
        (folder / f"{pid}.json").write_text(json.dumps(bundle, indent=1))
        (folder / f"{pid}.request.json").write_text(json.dumps(request, indent=1))
        index.append({"patient": pid, "scenario": scenario.name, "hook": scenario.hook,
                      "expect": sorted(scenario.expect), "request": f"{pid}.request.json"})
    (folder / "index.json").write_text(json.dumps(index, indent=1))


def _post(base: str, exported: list[tuple[str, scenarios.Scenario, dict, dict]], wait: float) -> int:
    try:
        wait_for(base, wait)
    except TimeoutError as exc:
        print(f"mm-cds export-patients: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for pid, _, bundle, _ in exported:
        response = requests.post(base, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=60)
        ok = response.status_code in (200, 201)
        failed += not ok
        print(f"{'loaded' if ok else 'FAILED'} {pid}: HTTP {response.status_code}" + ("" if ok else f" {response.text[:300]}"))
    print(f"{len(exported) - failed} patients loaded into {base}, {failed} failed")
    return 1 if failed else 0
