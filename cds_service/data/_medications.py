"""Medication references: found in the request, else read from fhirServer; codes merged.

A FHIR server's `code` search on MedicationRequest, -Administration, -Statement and
-Dispense matches medicationCodeableConcept only, and many EHRs send medicationReference.
So those searches carry no code (knowledge builds them so), and every record pointing to
a Medication is given, on a copy, a medicationCodeableConcept holding the Medication's
code and its ingredients' codes: the retrieves' code filters and memberOf() then see one
shape, whatever the EHR sent.

Where a Medication is looked for, in order:
  contained in the record ("#id")
  any Medication in the request: a prefetched or fetched Bundle (`_include` results too),
  the draft orders
  a read of Medication/{id} from fhirServer (bearer token), each id at most once per
  call, concurrently, inside the call's deadline; absolute references only on fhirServer.
  Several relative references of one type found together are read by one search
  (`Medication?_id=a,b,c`; what is absent from its answer is what a read would not find),
  unless the server refuses it (then each is read, and the server remembered)
A MedicationAdministration with no medication of its own takes that of its `request`
(the MedicationRequest in the request data, else read). A reference that cannot be
resolved is missing data: the call answers 412 naming the keys whose records hold it.
Pure except for `MedicationReads`, which is given the client and the executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import lru_cache

from cds_service.data._http import sent_length
from cds_service.errors import FetchError

MEDICATION_TYPES = ("MedicationRequest", "MedicationAdministration", "MedicationStatement", "MedicationDispense")


def reference_of(resource: dict, element: str) -> str | None:
    value = resource.get(element)
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) and ref else None


@lru_cache(maxsize=4096)  # the same few references on thousands of records
def local_key(ref: str) -> str | None:
    """"Type/id" of a relative or absolute reference (history dropped); None for others."""
    if ref.startswith(("#", "urn:")):
        return None
    parts = ref.split("/_history")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 and parts[-2] and parts[-1] else None


def _contained(record: dict, ref: str) -> dict | None:
    contained = record.get("contained")
    if not isinstance(contained, list):
        return None
    wanted = ref[1:]
    for c in contained:
        if isinstance(c, dict) and c.get("id") == wanted and c.get("resourceType") == "Medication":
            return c
    return None


def medication_concept(medication: dict) -> dict | None:
    """Medication.code and every ingredient's itemCodeableConcept, as one CodeableConcept."""
    raw_code = medication.get("code")
    code: dict = raw_code if isinstance(raw_code, dict) else {}
    codings = [c for c in code.get("coding") or [] if isinstance(c, dict)]
    for ingredient in medication.get("ingredient") or []:
        item = ingredient.get("itemCodeableConcept") if isinstance(ingredient, dict) else None
        if isinstance(item, dict):
            codings.extend(c for c in item.get("coding") or [] if isinstance(c, dict))
    if not codings and not code.get("text"):
        return None
    concept: dict = {"coding": codings}
    if code.get("text"):
        concept["text"] = code["text"]
    return concept


@dataclass
class Resolution:
    """How a call's medication references were resolved (for the trace and the 412)."""

    contained: int = 0
    in_request: int = 0
    read: int = 0
    unresolved: dict[str, set[str]] = field(default_factory=dict)  # reference -> keys holding it

    def note(self) -> str | None:
        total = self.contained + self.in_request + self.read
        if not total and not self.unresolved:
            return None
        text = (f"medicationReference: {total} resolved ({self.contained} contained, {self.in_request} in the "
                f"Bundles (prefetched or fetched), {self.read} read from fhirServer)")
        if self.unresolved:
            text += f"; unresolved: {', '.join(sorted(self.unresolved))}"
        return text


class Medications:
    """The Medications (and MedicationRequests) of one call, by "Type/id"."""

    def __init__(self, pool: Iterable[dict]):
        self.by_key: dict[str, dict] = {}
        self.from_server: set[str] = set()
        # id(Medication) -> its concept: one Medication/<id> is referenced by hundreds of
        # records; they share one concept (read only, like the records themselves)
        self._concepts: dict[int, dict | None] = {}
        self.add(pool)

    def add(self, resources: Iterable[dict], from_server: bool = False) -> None:
        for r in resources:
            kind, rid = r.get("resourceType"), r.get("id")
            if kind in ("Medication", "MedicationRequest") and isinstance(rid, str):
                key = f"{kind}/{rid}"
                self.by_key.setdefault(key, r)
                if from_server:
                    self.from_server.add(key)

    def wanted(self, lists: Iterable[list[dict]]) -> set[str]:
        """References ("Type/id" or absolute) that are neither contained nor at hand."""
        out: set[str] = set()
        for resources in lists:
            for record in resources:
                for ref in self._refs_needed(record):
                    key = local_key(ref)
                    if key is not None and key not in self.by_key:
                        out.add(ref)
        return out

    def _refs_needed(self, record: dict) -> list[str]:
        if record.get("resourceType") not in MEDICATION_TYPES or "medicationCodeableConcept" in record:
            return []
        ref = reference_of(record, "medicationReference")
        if ref is not None:
            if ref.startswith("#") or (self._find(record, ref) is not None):
                return []
            return [ref]
        request = reference_of(record, "request") if record.get("resourceType") == "MedicationAdministration" else None
        if request is None:
            return []
        found = self._find(record, request)
        if found is None:
            return [request]
        return self._refs_needed(found)

    def _find(self, record: dict, ref: str) -> dict | None:
        if ref.startswith("#"):
            return _contained(record, ref)
        key = local_key(ref)
        return self.by_key.get(key) if key else None

    def resolve(self, resources: list[dict], key: str, resolution: Resolution) -> list[dict]:
        """`resources` with each referencing record copied, given the Medication's codes."""
        if not any(r.get("resourceType") in MEDICATION_TYPES and "medicationCodeableConcept" not in r
                   for r in resources):
            return resources
        out = []
        # What a record resolves to depends only on its reference (unless contained): the
        # same few references on thousands of records are looked up once per list.
        seen: dict[tuple[str, str], tuple[dict | None, str | None]] = {}
        for record in resources:
            if record.get("resourceType") in MEDICATION_TYPES and "medicationCodeableConcept" not in record:
                memo = _memo_key(record)
                found = seen.get(memo) if memo is not None else None
                if found is None:
                    found = self._concept(record, depth=0)
                    if memo is not None:
                        seen[memo] = found
                concept, where = found
                if concept is not None:
                    record = {**record, "medicationCodeableConcept": concept}
                    if where == "contained":
                        resolution.contained += 1
                    elif where == "read":
                        resolution.read += 1
                    else:
                        resolution.in_request += 1
                elif where is not None:
                    resolution.unresolved.setdefault(where, set()).add(key)
            out.append(record)
        return out

    def _concept(self, record: dict, depth: int) -> tuple[dict | None, str | None]:
        """(concept, how it was found) or (None, the unresolved reference) or (None, None)."""
        if isinstance(record.get("medicationCodeableConcept"), dict):
            return record["medicationCodeableConcept"], "request"
        ref = reference_of(record, "medicationReference")
        if ref is None:
            request = reference_of(record, "request")
            if record.get("resourceType") != "MedicationAdministration" or request is None or depth:
                return None, None  # nothing to resolve (a record without medication, say)
            found = self._find(record, request)
            if found is None:
                return None, request
            return self._concept(found, depth + 1)
        medication = self._find(record, ref)
        if medication is None:
            return None, ref
        if id(medication) not in self._concepts:
            self._concepts[id(medication)] = medication_concept(medication)
        concept = self._concepts[id(medication)]
        if concept is None:
            return None, ref  # a Medication with no code: the drug cannot be told
        if ref.startswith("#"):
            return concept, "contained"
        key = local_key(ref)
        return concept, "read" if key in self.from_server else "request"


def _memo_key(record: dict) -> tuple[str, str] | None:
    """A record's reference, when that alone decides what it resolves to (not contained)."""
    ref = reference_of(record, "medicationReference")
    if ref is not None:
        return None if ref.startswith("#") else ("medication", ref)
    request = reference_of(record, "request") if record.get("resourceType") == "MedicationAdministration" else None
    return None if request is None or request.startswith("#") else ("request", request)


class MedicationReads:
    """Read the wanted references from fhirServer, concurrently, before `deadline`.

    `run(wanted)` reads and waits; `start(refs)` only submits (from any thread), and
    `collect()` waits for everything started: reads begin as soon as a key's search
    answers, while the other keys are still being fetched. With `search` (type, ids ->
    resources), the relative references of one type started together are one search of
    at most `max_chars` characters; `refused` is told when the server answers it 400, and
    its references are then read one by one."""

    def __init__(self, read: Callable[[str], list[dict]], executor: Executor, deadline: float,
                 search: Callable[[str, list[str]], list[dict]] | None = None, max_chars: int = 0,
                 refused: Callable[[], None] | None = None):
        self.read, self.executor, self.deadline = read, executor, deadline
        self.search, self.max_chars, self.refused = search, max_chars, refused
        self.outcomes: list[tuple[str, float]] = []  # (outcome kind, seconds) per read or search
        self._futures: list = []

    def _one(self, ref: str) -> list[dict]:
        started = time.monotonic()
        try:
            found = self.read(ref)
            self.outcomes.append(("ok", time.monotonic() - started))
            return found
        except FetchError as exc:
            self.outcomes.append((exc.kind, time.monotonic() - started))
            return []

    def _some(self, kind: str, ids: list[str]) -> list[dict]:
        started = time.monotonic()
        try:
            found = self.search(kind, ids)  # type: ignore[misc]  # only batched with a search
            self.outcomes.append(("ok", time.monotonic() - started))
            return found
        except FetchError as exc:
            if exc.status != 400:
                self.outcomes.append((exc.kind, time.monotonic() - started))
                return []
        if self.refused is not None:
            self.refused()
        return [r for rid in ids for r in self._one(f"{kind}/{rid}")]

    def start(self, refs: Iterable[str]) -> None:
        singles, batches = _batched(sorted(refs), self.max_chars if self.search is not None else 0)
        futures = [self.executor.submit(self._one, ref) for ref in singles]
        futures += [self.executor.submit(self._some, kind, ids) for kind, ids in batches]
        self._futures.extend(futures)  # one list extended at once: safe from several fetch threads

    def collect(self) -> list[dict]:
        futures, self._futures = self._futures, []
        found: list[dict] = []
        for future in futures:
            try:
                found.extend(future.result(timeout=max(0.0, self.deadline + 0.05 - time.monotonic())))
            except FutureTimeout:
                future.cancel()
                self.outcomes.append(("timeout", 0.0))
        return found

    def run(self, wanted: set[str]) -> list[dict]:
        self.start(wanted)
        return self.collect()


def _batched(refs: list[str], max_chars: int) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The references read alone, and (type, ids) searches of two or more relative ones,
    each `Type?_id=...` at most `max_chars` long (0: every reference alone)."""
    by_type: dict[str, list[str]] = {}
    singles: list[str] = []
    for ref in refs:
        key = local_key(ref)
        if max_chars <= 0 or key is None or ref.lower().startswith(("http://", "https://")) or ref != key:
            singles.append(ref)  # absolute, versioned or odd: read as it is written
            continue
        kind, rid = key.split("/")
        by_type.setdefault(kind, []).append(rid)
    batches: list[tuple[str, list[str]]] = []
    for kind, ids in by_type.items():
        chunk: list[str] = []
        for rid in ids:
            if chunk and sent_length(f"{kind}?_id={','.join([*chunk, rid])}") > max_chars:
                batches.append((kind, chunk))
                chunk = []
            chunk.append(rid)
        batches.append((kind, chunk))
    singles += [f"{kind}/{ids[0]}" for kind, ids in batches if len(ids) == 1]
    return singles, [(kind, ids) for kind, ids in batches if len(ids) > 1]
