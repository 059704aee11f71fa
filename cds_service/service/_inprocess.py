"""Calling the services in-process with the patient's data in hand: no EHR, no HTTP.

Used by `mm-cds test` and `mm-cds explain`, by $apply (whose `data` Bundle plays the role
of prefetch) and by the "try it" page. The request still goes through hooks.call: the
same validation, retrieves, evaluation and cards as a CDS Hooks call.
"""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cds_service import knowledge
from cds_service.data import FetchSettings, HttpTransport
from cds_service.knowledge import KnowledgeBase, Service
from cds_service.scenarios import Scenario
from cds_service.service import _call as hooks


def prefetch_from_data(templates: dict[str, str], context: dict, resources: list[dict], today: dt.date) -> dict[str, Any]:
    """Each prefetch key filled from the data in hand, as a FHIR server would answer it, but
    broadly: a read (Type/id) gets that resource or null; a search gets every resource of
    its type. The service applies each data requirement again (patient, codes, status,
    dates), exactly as it does to any prefetch, so nothing narrower is needed here."""
    out: dict[str, Any] = {}
    for key, template in templates.items():
        query = knowledge.resolve_template(template, context, today)
        if query is None:
            continue  # needs a context field the request lacks: the service says so in the trace
        path, _, search = query.partition("?")
        parts = [p for p in path.split("/") if p]
        if not search and len(parts) == 2:
            out[key] = next((r for r in resources if r.get("resourceType") == parts[0]
                                 and r.get("id") == parts[1]), None)
        else:
            matching = [r for r in resources if r.get("resourceType") == parts[0]]
            out[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(matching),
                            "entry": [{"resource": r} for r in matching]}
    return out


def scenario_request(scenario: Scenario, templates: dict[str, str]) -> dict[str, Any]:
    """The CDS Hooks request an EHR would send for this scenario, with the prefetch that the
    service's templates (discovery's `prefetch`) ask for."""
    context = scenario.context()
    today = scenario.now.astimezone(dt.timezone.utc).date()
    return {"hook": scenario.hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch_from_data(templates, context, scenario.chart, today)}


@dataclass
class Local:
    """The services of one knowledge base, called directly."""

    kb: KnowledgeBase
    fetch: FetchSettings

    @classmethod
    def open(cls, kb: KnowledgeBase, timeout: float = 5.0) -> Local:
        # Only a request that names a fhirServer and lacks prefetch fetches anything.
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fhir-fetch")
        return cls(kb, FetchSettings(HttpTransport(), executor, timeout))

    def services(self, hook: str, service_id: str | None = None) -> list[Service]:
        """The service named, or every service answering the hook (what an EHR calls)."""
        if service_id:
            service = self.kb.service_for(service_id, hook)
            if service is None:
                raise LookupError(f"no CDS service '{service_id}' for hook {hook}")
            return [service]
        found = [s for s in self.kb.services.values() if s.hook == hook]
        if not found:
            raise LookupError(f"no CDS service answers {hook}")
        return found

    def call(self, service: Service, body: dict, now: dt.datetime, explain: bool = False) -> dict[str, Any]:
        return hooks.call(self.kb, service, body, now, self.fetch, explain).response

    def run(self, scenario: Scenario, explain: bool = False) -> list[tuple[Service, dict[str, Any]]]:
        """Each service's answer for the scenario, at the scenario's `now`."""
        return [(service, self.call(service, scenario_request(scenario, service.prefetch), scenario.now, explain))
                for service in self.services(scenario.hook, scenario.service)]
