"""Apply a data requirement to the resources at hand: type, patient, codes, dates, order.

The EHR's answer to a prefetch template is never trusted to be filtered: this is run on
every requirement's data, prefetched or fetched, and gives FHIRPath a small collection,
newest first. Pure functions; no I/O.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from cds_service.fhirpath import first_date, path_codings, subject_reference
from cds_service.knowledge import CodeFilter, DataRequirement, DateFilter

_DIRECT = 8  # lists up to this many records are filtered without a code index


@dataclass(slots=True)
class Retrieved:
    resources: list[dict]
    received: int = 0
    other_patient: int = 0
    other_type: int = 0  # entries of another resource type (the Medications a search's _include brought)


class Retriever:
    """One request's retrieves.

    Several requirements often read the same records (a key and the windows narrowed
    from it, or identical queries). Each source list is checked for the patient and
    split by type once, indexed by code once per element path, and the selective code
    filter of a requirement (a value set) is answered by testing the distinct codes of
    the index (dozens), not every record (thousands); its other code filters (status)
    are tested on the few records left, so a path like status is never indexed over
    thousands of records. The records a code filter leaves are sorted by date once, newest
    first: every requirement reading them (a key and the windows narrowed from it) takes
    its window as a slice found by bisection, already in the order it wants.
    """

    def __init__(self, today: dt.date, patient_id: str):
        self.today = today
        self.patient_id = patient_id
        self._typed: dict[tuple, tuple[list[dict], int]] = {}
        self._indexes: dict[tuple, dict[tuple, list[int]]] = {}
        self._matches: dict[tuple, list[dict]] = {}
        self._dates: dict[tuple, dt.date | None] = {}
        self._by_date: dict[tuple, tuple[list[dict], list[int], list[dict]]] = {}
        self._windows: dict[int, tuple[dt.date | None, dt.date | None]] = {}

    def run(self, requirement: DataRequirement, resources: list[dict]) -> Retrieved:
        typed, other = self._of_type(resources, requirement.type)
        other_type = len(resources) - len(typed) - other
        if not typed:  # the usual answer for most requirements of a sparse chart
            return Retrieved([], received=len(resources), other_patient=other, other_type=other_type)
        selective, rest = requirement.selective_filter, requirement.other_filters
        base = typed if selective is None else self._matching(typed, selective)
        if requirement.windows_on_sort:
            kept = self._newest_first(base, requirement.sort_paths, requirement.date_filters)
            if rest:
                kept = [r for r in kept if all(_record_has_code(r, cf) for cf in rest)]
        else:
            # the windows first: they leave few records (a week of ANC out of years) for the codes
            kept = [
                r for r in base
                if all(self._date_match(r, df) for df in requirement.date_filters)
                and all(_record_has_code(r, cf) for cf in rest)
            ]
            if requirement.sort_paths and len(kept) > 1:
                paths = requirement.sort_paths
                kept.sort(key=lambda r: self._date(r, paths) or dt.date.min, reverse=True)
        if requirement.limit:
            kept = kept[: requirement.limit]
        return Retrieved(kept, received=len(resources), other_patient=other, other_type=other_type)

    def _newest_first(self, base: list[dict], paths: tuple[str, ...], windows: tuple[DateFilter, ...]) -> list[dict]:
        """`base` newest first by `paths` (undated last, ties in their order), inside every
        window (each of them on `paths`): the sort done once per list, a window by bisection."""
        if not base:
            return base
        key = (id(base), paths)
        found = self._by_date.get(key)
        if found is None:
            dated: list[tuple[int, int]] = []
            undated: list[dict] = []
            for position, r in enumerate(base):
                when = first_date(r, paths)
                if when is None:
                    undated.append(r)
                else:
                    dated.append((-when.toordinal(), position))
            dated.sort()
            found = self._by_date[key] = ([base[p] for _, p in dated], [k for k, _ in dated], undated)
        records, keys, undated = found
        if not windows:
            return records + undated if undated else records
        lo, hi = 0, len(records)
        for df in windows:
            earliest, latest = self._window(df)
            if latest is not None:
                lo = max(lo, bisect_left(keys, -latest.toordinal()))
            if earliest is not None:
                hi = min(hi, bisect_right(keys, -earliest.toordinal()))
        return records[lo:hi] if lo < hi else []

    def _of_type(self, resources: list[dict], kind: str) -> tuple[list[dict], int]:
        key = (id(resources), kind)
        cached = self._typed.get(key)
        if cached is None:
            same: list[dict] = []
            other = 0
            ours, suffix = f"Patient/{self.patient_id}", f"/Patient/{self.patient_id}"
            for r in resources:
                if r.get("resourceType") != kind:
                    continue
                if kind == "Patient":
                    mine = r.get("id") == self.patient_id
                else:  # contained, urn:uuid or absent: nothing to compare (kept)
                    ref = subject_reference(r)
                    mine = ref is None or "Patient/" not in ref or ref == ours or ref.endswith(suffix)
                if mine:
                    same.append(r)
                else:
                    other += 1
            cached = self._typed[key] = (same, other)
        return cached

    def _index(self, typed: list[dict], path: str) -> dict[tuple, list[int]]:
        key = (id(typed), path)
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = {}
            for position, resource in enumerate(typed):
                for coding in path_codings(resource, path):
                    positions = index.setdefault(coding, [])
                    if not positions or positions[-1] != position:
                        positions.append(position)
        return index

    def _matching(self, typed: list[dict], cf: CodeFilter) -> list[dict]:
        key = (id(typed), cf.path, id(cf.value_set), cf.codes)  # identical filters of several requirements share it
        found = self._matches.get(key)
        if found is None:
            if len(typed) <= _DIRECT:  # a few records: testing each beats building an index
                found = self._matches[key] = [r for r in typed if _record_has_code(r, cf)]
                return found
            positions: set[int] = set()
            vs, codes = cf.value_set, cf.codes
            for (system, code), where in self._index(typed, cf.path).items():
                if (vs is not None and vs.contains(system, code)) or (system, code) in codes or (None, code) in codes:
                    positions.update(where)
            found = self._matches[key] = [typed[p] for p in sorted(positions)]
        return found

    def _date(self, resource: dict, paths: tuple[str, ...]) -> dt.date | None:
        key = (id(resource), paths)
        if key not in self._dates:
            self._dates[key] = first_date(resource, paths)
        return self._dates[key]

    def _window(self, df: DateFilter) -> tuple[dt.date | None, dt.date | None]:
        """(earliest, latest) day a filter keeps, worked out once per request."""
        window = self._windows.get(id(df))
        if window is None:
            lows = [self.today - dt.timedelta(days=df.days)] if df.days is not None else []
            if df.start:
                lows.append(dt.date.fromisoformat(df.start[:10]))
            window = self._windows[id(df)] = (max(lows) if lows else None,
                                              dt.date.fromisoformat(df.end[:10]) if df.end else None)
        return window

    def _date_match(self, resource: dict, df: DateFilter) -> bool:
        when = self._date(resource, df.paths)
        if when is None:
            return False
        earliest, latest = self._window(df)
        return (earliest is None or when >= earliest) and (latest is None or when <= latest)


def retrieve(requirement: DataRequirement, resources: list[dict], today: dt.date, patient_id: str) -> Retrieved:
    """One requirement on its own (see Retriever for many over shared records)."""
    return Retriever(today, patient_id).run(requirement, resources)


def _record_has_code(resource: dict, cf: CodeFilter) -> bool:
    """What the index answers for one record: a coding at cf.path that cf accepts."""
    vs, codes = cf.value_set, cf.codes
    for system, code in path_codings(resource, cf.path):
        if (vs is not None and vs.contains(system, code)) or (system, code) in codes or (None, code) in codes:
            return True
    return False
