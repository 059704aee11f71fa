"""The informatician's and integrator's subcommands of mm-cds (cli.py registers them):

    mm-cds test [PATH ...] [--site DIR]        run scenario files in-process; exit 1 on any failure
    mm-cds explain FILE NAME | --request JSON  why each card fired or not (in-process or --url)
    mm-cds reload [--url URL]                  load the edited knowledge into a running service
    mm-cds export-patients [--out DIR] [--post FHIR_BASE]   scenario patients as transaction Bundles
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

from cds_service import config, knowledge, ops, scenarios
from cds_service.cli import _explain_text as explain_text
from cds_service.cli import _export as export
from cds_service.cli import _reload
from cds_service.errors import KnowledgeError, RequestError, ScenarioError
from cds_service.service import Local, scenario_request

Handler = Callable[[argparse.Namespace], int]


def register(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    test = sub.add_parser("test", help="run scenario files in-process against the knowledge")
    test.add_argument("paths", nargs="*", type=Path, default=[scenarios.DEFAULT_FOLDER],
                      help="scenario files or folders (default: the shipped scenarios, tests/scenarios in a checkout)")
    test.add_argument("--site", action="append", default=[], help="a site directory (repeatable)")
    test.add_argument("-k", dest="match", help="only scenarios whose name contains this text")
    explain = sub.add_parser("explain", help="show why each card fired or not, for a scenario or a request")
    explain.add_argument("file", nargs="?", type=Path, help="a scenario file")
    explain.add_argument("name", nargs="?", help="the scenario's name (or a unique part of it)")
    explain.add_argument("--request", type=Path, help="a CDS Hooks request JSON file instead of a scenario")
    explain.add_argument("--service", help="the service to call (default: every service answering the hook)")
    explain.add_argument("--url", help="a running service's base URL (default: evaluate in-process)")
    explain.add_argument("--token", help="a bearer JWT for --url (explain is given to loopback or authenticated callers)")
    explain.add_argument("--site", action="append", default=[], help="a site directory (in-process)")
    explain.add_argument("--json", action="store_true", help="print the answers as JSON")
    return {"test": _test, "explain": _explain, **_reload.register_cli(sub), **export.register_cli(sub)}


def load_kb(sites: list[str] | tuple[str, ...]) -> knowledge.KnowledgeBase:
    settings = config.load()
    # The output is the report; knowledge problems are printed. The process's own stderr, not a
    # stand-in that may be gone by the next log line (a caller's capture).
    ops.configure_logging("ERROR", stream=sys.__stderr__)
    directories = tuple(dict.fromkeys(settings.directories + tuple(str(Path(s).resolve()) for s in sites)))
    return knowledge.load(directories, settings.canonical_base, settings.prefetch_date_tokens)


def _test(args: argparse.Namespace) -> int:
    try:
        found = scenarios.load_all(args.paths)
        kb = load_kb(scenarios.site_dirs_for(args.paths) + tuple(args.site))
    except KnowledgeError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        print(f"mm-cds test: cannot read the scenarios: {exc}", file=sys.stderr)
        return 1
    selected = [s for s in found if not args.match or args.match.lower() in s.name.lower()]
    local = Local.open(kb)
    failed = 0
    for scenario in selected:
        try:
            cards = [card for _, answer in local.run(scenario) for card in answer["cards"]]
            verdict = scenarios.check(scenario, cards)
        except Exception as exc:  # a scenario the service refuses (400/412) is a failure, not a crash
            verdict = scenarios.Verdict([], sorted(scenario.expect), [f"the call failed: {exc}"])
        failed += not verdict.passed
        print(f"{'PASS' if verdict.passed else 'FAIL'}  {scenario.label}")
        print(f"      fired: {_codes(verdict.fired)} | expected: {_codes(verdict.expected)} | "
              f"missing: {_codes(verdict.missing)} | unexpected: {_codes(verdict.unexpected)}")
        for problem in verdict.problems[1 if verdict.missing or verdict.unexpected else 0:]:
            print(f"      {problem}")
    print(f"\n{len(selected) - failed} passed, {failed} failed")
    return 1 if failed or not selected else 0


def _codes(codes: list[str]) -> str:
    return ", ".join(codes) or "-"


def _explain(args: argparse.Namespace) -> int:
    try:
        answers = _explain_answers(args)
    except (LookupError, OSError, ValueError, KnowledgeError) as exc:
        print(f"mm-cds explain: {exc}", file=sys.stderr)
        return 1
    except RequestError as exc:  # what the service would answer with a 4xx
        print(f"mm-cds explain: the request is refused ({exc.status}): {exc.message}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"mm-cds explain: cannot reach {args.url}: {type(exc).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({service: answer for service, answer in answers}, indent=2))
    else:
        print("\n\n".join(explain_text.render(answer) for _, answer in answers))
    return 0


def _explain_answers(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(service id, CDS Hooks answer with its trace) for each service called."""
    body: dict[str, Any] = {}
    if args.request:
        body = json.loads(args.request.read_text())
        if not isinstance(body, dict) or not isinstance(body.get("hook"), str):
            raise ValueError(f"{args.request}: not a CDS Hooks request (no hook)")
        hook, service_id, now = body["hook"], args.service, dt.datetime.now(dt.timezone.utc)
        scenario = None
    elif args.file and args.name:
        scenario = scenarios.find(args.file, args.name)
        hook, service_id, now = scenario.hook, args.service or scenario.service, scenario.now
    else:
        raise ValueError("give a scenario file and a scenario name, or --request FILE")
    if args.url:
        return _explain_remote(args, hook, service_id, body if scenario is None else None, scenario)
    local = Local.open(load_kb(scenarios.site_dirs_for([args.file]) + tuple(args.site) if scenario else args.site))
    if scenario is not None:
        return [(s.id, answer) for s, answer in local.run(scenario, explain=True)]
    return [(s.id, local.call(s, body, now, explain=True)) for s in local.services(hook, service_id)]


def _explain_remote(args: argparse.Namespace, hook: str, service_id: str | None, body: dict | None,
                    scenario: scenarios.Scenario | None) -> list[tuple[str, dict[str, Any]]]:
    base = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    discovery = requests.get(f"{base}/cds-services", headers=headers, timeout=10)
    discovery.raise_for_status()
    services = [s for s in discovery.json()["services"] if s["hook"] == hook and (not service_id or s["id"] == service_id)]
    if not services:
        raise ScenarioError(f"{base} has no service{' ' + service_id if service_id else ''} for {hook}")
    answers = []
    for service in services:
        # A running service uses its own clock: the scenario's patient is moved to today, and
        # prefetch is built from the service's own discovery templates, as an EHR would.
        request = body if scenario is None else _remote_scenario_request(scenario, service)
        response = requests.post(f"{base}/cds-services/{service['id']}?explain=1", json=request,
                                 headers=headers, timeout=30)
        if response.status_code != 200:
            raise ValueError(f"{service['id']} answered HTTP {response.status_code}: {response.text[:500]}")
        answers.append((service["id"], response.json()))
    return answers


def _remote_scenario_request(scenario: scenarios.Scenario, discovered: dict[str, Any]) -> dict[str, Any]:
    moved = scenario.as_of(dt.datetime.now(dt.timezone.utc).date())
    return scenario_request(moved, discovered.get("prefetch") or {})
