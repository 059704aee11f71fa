"""Assemble a request's data: prefetch first, then fetch what is missing, concurrently.

Per data requirement (= prefetch key):
  prefetched resource or Bundle    used; a Bundle with a next link is paged from fhirServer
  null, or an empty Bundle         no data
  OperationOutcome, or absent      fetched from fhirServer (bearer token), with a timeout; keys
                                   whose searches differ only by codes share one (data/_searches.py)
  template needs an absent context field (e.g. no encounterId)   no data, said in the trace
  code filter on an empty value set   nothing can match: no data, nothing fetched
A key that can be neither prefetched nor fetched makes the call answer 412. Then the
medication references of every record are resolved (data/_medications.py): Medications
not in the request are read from fhirServer, inside the same deadline as the keys; a
reference that cannot be resolved is a 412 too.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from cds_service import knowledge
from cds_service.data._fetch import FhirClient, IncludeRefusals, MergeRefusals, bundle_resources, next_link, same_server
from cds_service.data._http import Transport
from cds_service.data._medications import (
    MEDICATION_TYPES,
    MedicationReads,
    Medications,
    Resolution,
    local_key,
    reference_of,
)
from cds_service.data._retrieve import Retriever
from cds_service.data._searches import Search, plan
from cds_service.errors import DataUnavailable, FetchError, InvalidRequest
from cds_service.knowledge import Service


@dataclass(frozen=True)
class FetchRecord:
    """One prefetch key fetched from fhirServer: its outcome kind and its duration."""

    key: str
    outcome: str  # "ok" or one of errors.FETCH_KINDS
    seconds: float


@dataclass
class RequestData:
    """The assembled, filtered data of one call: what the engine evaluates over."""

    hook: str
    context: dict
    patient: dict | None
    draft_orders: list[dict]
    selections: list[dict]  # the trigger orders: order-select's selected, order-sign's all
    retrieved: Retrievals  # each key filtered on first read
    now: dt.datetime

    @property
    def today(self) -> dt.date:
        return self.now.astimezone(dt.timezone.utc).date()


class Retrievals(Mapping[str, list[dict]]):
    """The data requirements' records, each filtered on first read.

    A busy call reads about half of its requirements: a rule whose first condition fails
    never reads the rest (workload (c) reads 35 of 104). The records of every key were all
    received and their medication references resolved before (an unresolvable one is a
    412, read or not); what waits is the filtering, and the counts in that key's report,
    which `complete()` fills for the explain trace.
    """

    def __init__(self, requirements: Mapping[str, Any], resolved: Mapping[str, list[dict]],
                 reports: Mapping[str, KeyReport], retriever: Retriever):
        self._requirements, self._resolved, self._reports = requirements, resolved, reports
        self._retriever = retriever
        self._done: dict[str, list[dict]] = {}

    def __getitem__(self, key: str) -> list[dict]:
        found = self._done.get(key)
        if found is None:
            req = self._requirements[key]  # KeyError for a key that is not a requirement
            result = self._retriever.run(req, self._resolved.get(key, []))
            report = self._reports[key]
            report.count, report.other_patient = len(result.resources), result.other_patient
            report.other_types = result.other_type
            found = self._done[key] = result.resources
        return found

    def __contains__(self, key: object) -> bool:
        return key in self._requirements  # without filtering it (Mapping's own reads the key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._requirements)

    def __len__(self) -> int:
        return len(self._requirements)

    def complete(self) -> None:
        for key in self._requirements:
            self[key]


@dataclass(slots=True)
class KeyReport:
    source: str  # prefetch | fetch | none
    received: int = 0
    count: int = 0
    note: str | None = None
    other_patient: int = 0
    other_types: int = 0  # received entries of another resource type (Medications from _include)
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "received": self.received, "count": self.count}
        if self.note:
            out["note"] = self.note
        if self.other_patient:
            out["droppedOtherPatient"] = self.other_patient
        if self.other_types:
            out["otherResourceTypes"] = self.other_types
        if self.seconds is not None:
            out["fetchMs"] = round(self.seconds * 1000, 1)
        return out


@dataclass
class Assembled:
    data: RequestData
    reports: dict[str, KeyReport] = field(default_factory=dict)
    raw: dict[str, list[dict]] = field(default_factory=dict)  # as received, for the trace
    fetches: list[FetchRecord] = field(default_factory=list)  # what was fetched, and how it went


@dataclass
class FetchSettings:
    transport: Transport
    executor: Executor
    timeout: float = 5.0
    max_pages: int = 20
    max_bytes: int = 16 * 1024 * 1024
    include_refusals: IncludeRefusals = field(default_factory=IncludeRefusals)  # this process's, shared by its calls
    merge_max_chars: int = 2000  # a search merged for several keys stays this short (data/_searches.py); 0: never merged
    merge_refusals: MergeRefusals = field(default_factory=MergeRefusals)


def draft_orders(context: dict) -> list[dict]:
    bundle = context.get("draftOrders") or {}
    return bundle_resources(bundle)


def trigger_orders(hook: str, context: dict, orders: list[dict]) -> list[dict]:
    """order-select: the selected draft orders; order-sign: all of them; else none."""
    if hook == "order-sign":
        return orders
    if hook != "order-select":
        return []
    by_ref = {f"{o.get('resourceType')}/{o.get('id')}": o for o in orders}
    selected = []
    for i, ref in enumerate(context.get("selections") or []):
        if ref not in by_ref:
            raise InvalidRequest(f"context.selections[{i}]: {ref} is not in context.draftOrders",
                                 field=f"context.selections[{i}]")
        selected.append(by_ref[ref])
    return selected


def assemble(service: Service, body: dict, now: dt.datetime, fetch: FetchSettings) -> Assembled:
    context = body["context"]
    trigger_orders(service.hook, context, draft_orders(context))  # a bad selection is a 400 before any fetch
    today = now.astimezone(dt.timezone.utc).date()
    raw: dict[str, list[dict]] = {}
    reports: dict[str, KeyReport] = {}
    to_fetch: dict[str, str] = {}  # key -> relative query or absolute next-page url
    mergeable: dict[str, frozenset[str]] = {}  # key -> its token-list parameters (data/_searches.py)
    given = body.get("prefetch") or {}
    for req in service.plan.requirements:
        if req.derived_from:
            continue  # filled from its source key below
        if req.template is None:
            raw[req.key], reports[req.key] = [], KeyReport("none", note=req.skip_reason)
            continue
        query = knowledge.resolve_template(req.template, context, today)
        if query is None:
            raw[req.key], reports[req.key] = [], KeyReport("none", note="its query needs a context field the request lacks")
            continue
        value = given.get(req.key, ...)
        if value is None:
            raw[req.key], reports[req.key] = [], KeyReport("prefetch", note="null: no data")
        elif value is ... or value.get("resourceType") == "OperationOutcome":
            to_fetch[req.key] = query
            if req.merge_params is not None:
                mergeable[req.key] = req.merge_params
        elif value.get("resourceType") == "Bundle":
            raw[req.key] = bundle_resources(value)
            reports[req.key] = KeyReport("prefetch", received=len(raw[req.key]))
            following = next_link(value)
            if following:
                to_fetch[req.key] = following
        else:
            raw[req.key], reports[req.key] = [value], KeyReport("prefetch", received=1)
    fetches: list[FetchRecord] = []
    deadline = time.monotonic() + fetch.timeout  # the call's one deadline: keys, pages, Medications
    early = None
    if to_fetch:
        early = _EarlyReads(body, fetch, deadline, [*raw.values(), draft_orders(context)]) if body.get("fhirServer") else None
        _fetch_all(to_fetch, mergeable, body, fetch, raw, reports, fetches, deadline, early)
    for req in service.plan.requirements:
        if req.derived_from:
            raw[req.key] = raw[req.derived_from]
            source = reports[req.derived_from]
            reports[req.key] = KeyReport(source.source, received=source.received,
                                         note=f"narrowed from the data of {req.derived_from}")
    ordered = {req.key: reports[req.key] for req in service.plan.requirements}
    medications = _medications(body, raw, fetch, deadline, fetches, early)
    return Assembled(_request_data(service, body, now, raw, ordered, today, medications, fetches),
                     ordered, raw, fetches)


def _client(body: dict, fetch: FetchSettings) -> FhirClient:
    token = (body.get("fhirAuthorization") or {}).get("access_token")
    return FhirClient(body["fhirServer"], token, fetch.transport, fetch.timeout, fetch.max_pages, fetch.max_bytes,
                      fetch.include_refusals)


def _medication_reads(body: dict, fetch: FetchSettings, deadline: float) -> MedicationReads:
    """The call's reads of references, several of one type as one `_id` search, as merged
    searches are (off for a server that refused either: FetchSettings.merge_refusals)."""
    server = body["fhirServer"]
    client = _client(body, fetch)

    def read(ref: str) -> list[dict]:
        if ref.lower().startswith(("http://", "https://")):
            if not same_server(server, ref):
                return []  # the bearer token goes to fhirServer only: left unresolved
            return client.follow(ref, deadline, read=True)
        return client.query(str(local_key(ref)), deadline)

    def search(kind: str, ids: list[str]) -> list[dict]:
        return client.query(f"{kind}?_id={','.join(ids)}", deadline)

    max_chars = 0 if fetch.merge_refusals.refuses(client.base) else fetch.merge_max_chars
    return MedicationReads(read, fetch.executor, deadline, search, max_chars,
                           refused=lambda: fetch.merge_refusals.refused(client.base))


class _EarlyReads:
    """The Medication reads of a fetched key, started as soon as its search answers (in
    its fetch thread), not after the slowest key: a call costs about one query plus one
    read, not two rounds. Only references that nothing in the request (prefetch, draft
    orders) nor the key's own answer (`_include` entries) holds; each once per call."""

    def __init__(self, body: dict, fetch: FetchSettings, deadline: float, given: list[list[dict]]):
        self.reads = _medication_reads(body, fetch, deadline)
        self.known = set(Medications(r for resources in given for r in resources).by_key)
        self.started: set[str] = set()
        self._lock = threading.Lock()

    def answered(self, resources: list[dict]) -> None:
        here = Medications(resources).by_key
        refs = set()
        for record in resources:
            if record.get("resourceType") in MEDICATION_TYPES and "medicationCodeableConcept" not in record:
                ref = reference_of(record, "medicationReference")
                key = local_key(ref) if ref else None
                if ref and key and key not in self.known and key not in here:
                    refs.add(ref)
        with self._lock:
            new = refs - self.started
            self.started |= new
        if new:
            self.reads.start(new)


def _medications(body: dict, raw: dict[str, list[dict]], fetch: FetchSettings, deadline: float,
                 fetches: list[FetchRecord], early: _EarlyReads | None = None) -> Medications:
    """The Medications the records reference: those in the request, plus reads of the
    others from fhirServer (each once, concurrently, before the deadline; those of fetched
    keys started as each key answered; two rounds at most: an administration's
    MedicationRequest, then that request's Medication)."""
    orders = draft_orders(body["context"])
    lists = list({id(v): v for v in raw.values()}.values()) + [orders]
    medications = Medications(r for resources in lists for r in resources)
    if not body.get("fhirServer"):
        return medications
    tried: set[str] = set()
    if early is not None:
        medications.add(early.reads.collect(), from_server=True)
        fetches.extend(FetchRecord("Medication", outcome, seconds) for outcome, seconds in early.reads.outcomes)
        tried |= early.started
    for _ in range(2):
        wanted = medications.wanted(lists) - tried
        if not wanted or time.monotonic() >= deadline:
            break
        tried |= wanted
        reads = _medication_reads(body, fetch, deadline)
        medications.add(reads.run(wanted), from_server=True)
        fetches.extend(FetchRecord("Medication", outcome, seconds) for outcome, seconds in reads.outcomes)
    return medications


def _fetch_all(to_fetch: dict[str, str], mergeable: dict[str, frozenset[str]], body: dict, fetch: FetchSettings,
               raw: dict[str, list[dict]], reports: dict[str, KeyReport], fetches: list[FetchRecord], deadline: float,
               early: _EarlyReads | None = None) -> None:
    server = body.get("fhirServer")
    if not server:
        keys = sorted(to_fetch)
        raise DataUnavailable(
            f"prefetch key(s) {', '.join(keys)} missing and no fhirServer to fetch them from", keys)
    client = _client(body, fetch)
    max_chars = 0 if fetch.merge_refusals.refuses(client.base) else fetch.merge_max_chars
    searches = plan(to_fetch, mergeable, max_chars)
    failures: dict[str, str] = {}
    while searches:
        refused = _run_searches(searches, client, fetch, raw, reports, fetches, failures, deadline, early)
        if refused:
            fetch.merge_refusals.refused(client.base)
        # a merged search the server refused (a 400, or 414: too long): each key's own search
        searches = [Search((key,), to_fetch[key]) for search in refused for key in search.keys]
    if failures:
        keys = sorted(failures)
        detail = "; ".join(f"{k}: {failures[k]}" for k in keys)
        raise DataUnavailable(f"required data could not be fetched ({detail})", keys, fetches)


def _run_searches(searches: list[Search], client: FhirClient, fetch: FetchSettings, raw: dict[str, list[dict]],
                  reports: dict[str, KeyReport], fetches: list[FetchRecord], failures: dict[str, str],
                  deadline: float, early: _EarlyReads | None) -> list[Search]:
    """Every search at once, each key's data, report and record filled; returns the merged
    searches the server refused, to be sent again one key at a time."""
    started = time.monotonic()
    elapsed: dict[Search, float] = {}  # per search, measured in its own thread

    def run(search: Search) -> list[dict]:
        target = search.target
        try:
            # a merged search may page as far as its keys' own searches together
            pages = fetch.max_pages * len(search.keys)
            if target.lower().startswith(("http://", "https://")):
                found = client.follow(target, deadline, pages=pages)
            else:
                found = client.query(target, deadline, pages=pages)
        finally:
            elapsed[search] = time.monotonic() - started
        if early is not None:
            early.answered(found)
        return found

    futures = {search: fetch.executor.submit(run, search) for search in searches}
    refused: list[Search] = []
    for search, future in futures.items():
        try:
            # one grace for the whole call, not one per key
            resources = future.result(timeout=max(0.0, deadline + 0.05 - time.monotonic()))
        except FutureTimeout:
            future.cancel()
            for key in search.keys:
                failures[key] = f"timed out after {fetch.timeout:.1f}s"
                fetches.append(FetchRecord(key, "timeout", fetch.timeout))
            continue
        except FetchError as exc:
            if len(search.keys) > 1 and exc.status in (400, 414):
                refused.append(search)
                continue
            for key in search.keys:
                failures[key] = exc.reason
                fetches.append(FetchRecord(key, exc.kind, elapsed[search]))
            continue
        note = f"one search with {', '.join(search.keys)}" if len(search.keys) > 1 else None
        for key in search.keys:
            previous = raw.get(key, [])
            raw[key] = previous + resources if previous else resources  # one list: the retrieves index it once
            reports[key] = KeyReport("fetch" if not previous else "prefetch+fetch", received=len(raw[key]),
                                     seconds=elapsed[search], note=note)
            fetches.append(FetchRecord(key, "ok", elapsed[search]))
    return refused


def _request_data(service: Service, body: dict, now: dt.datetime, raw: dict[str, list[dict]],
                  reports: dict[str, KeyReport], today: dt.date, medications: Medications,
                  fetches: list[FetchRecord]) -> RequestData:
    context = body["context"]
    draft = Resolution()
    orders = medications.resolve(draft_orders(context), "context.draftOrders", draft)
    resolved, resolutions = _resolve_once(raw, medications)
    unresolved: dict[str, set[str]] = {}
    for resolution in [draft, *resolutions.values()]:
        for ref, keys in resolution.unresolved.items():
            unresolved.setdefault(ref, set()).update(keys)
    if unresolved:
        needed = sorted({k for ks in unresolved.values() for k in ks})
        where = "not in the request and not readable from fhirServer" if body.get("fhirServer") \
            else "not in the request, and no fhirServer to read them from"
        raise DataUnavailable(f"medication reference(s) {', '.join(sorted(unresolved))} could not be resolved "
                              f"({where}); needed by {', '.join(needed)}", needed, fetches,
                              sorted(unresolved))
    for key, resolution in resolutions.items():
        note = resolution.note()
        if note:
            report = reports[key]
            report.note = f"{report.note}; {note}" if report.note else note
    retriever = Retriever(today, context.get("patientId", ""))
    retrieved = Retrievals({req.key: req for req in service.plan.requirements}, resolved, reports, retriever)
    patient = next((found[0] for req in service.plan.requirements
                    if req.type == "Patient" and (found := retrieved[req.key])), None)
    return RequestData(
        hook=service.hook,
        context=context,
        patient=patient,
        draft_orders=orders,
        selections=trigger_orders(service.hook, context, orders),
        retrieved=retrieved,
        now=now,
    )


def _resolve_once(raw: dict[str, list[dict]], medications: Medications
                  ) -> tuple[dict[str, list[dict]], dict[str, Resolution]]:
    """Medication references resolved once per list: derived keys share their source's
    list, and the retriever's per-list caches rely on that sharing."""
    by_list: dict[int, tuple[list[dict], Resolution]] = {}
    resolved, resolutions = {}, {}
    for key, resources in raw.items():
        if id(resources) not in by_list:
            resolution = Resolution()
            by_list[id(resources)] = (medications.resolve(resources, key, resolution), resolution)
        resolved[key], resolutions[key] = by_list[id(resources)]
    return resolved, resolutions
