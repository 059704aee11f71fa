"""The searches of one call's missing keys: one search for several keys where it can answer them all.

A call that finds nothing prefetched needs some forty keys, twenty of them Observations
that differ only by their codes. The service re-applies every key's filters to whatever
arrives (data/_retrieve.py: the server is never trusted to have filtered), so one search
whose answer holds every record of several keys' searches can stand for all of them. Two
searches are merged when build_template made both (DataRequirement.merge_params; never a
cqf-fhirQueryPattern, whose parameters the retrieve may not re-apply) and they have the same
resource type, the same parameter names and the same value of every parameter that is not
one of their token lists (patient, dates, `_include`); the token lists (code, status,
intent, vaccine-code) are joined, a comma being OR in FHIR search. Each key then receives
the merged answer, a superset of its own.

A merged search stays within `max_chars` (the search without the server's base URL, as
sent: percent-encoding included; some servers refuse a query string over 2,048 bytes): the
keys that would make it longer start another. `max_chars` 0 sends one search per key. A search whose parameters cannot be read
(a read, a next-page URL, a repeated parameter) is sent alone and unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cds_service.data._http import sent_length


@dataclass(frozen=True)
class Search:
    """One request (and its pages) for `keys`: a relative search or read, or an absolute next-page URL."""

    keys: tuple[str, ...]
    target: str


@dataclass
class _Merged:
    kind: str
    names: tuple[str, ...]  # in the first key's order
    fixed: dict[str, str]  # the parameters every key has with the same value
    lists: dict[str, list[str]]  # the token lists, joined (each token once, in order)
    keys: list[str] = field(default_factory=list)
    length: int = 0  # of target() as sent (sent_length), kept as tokens join

    def joined(self, params: list[tuple[str, str]]) -> tuple[dict[str, list[str]], int]:
        """The lists with `params`' tokens joined, and how much longer that makes the search."""
        lists = {name: list(tokens) for name, tokens in self.lists.items()}
        grown = 0
        for name, value in params:
            tokens = lists.get(name)
            if tokens is None:
                continue
            for token in value.split(","):
                if token not in tokens:
                    grown += sent_length(token) + (1 if tokens else 0)  # and its comma
                    tokens.append(token)
        return lists, grown

    def target(self, lists: dict[str, list[str]] | None = None) -> str:
        lists = self.lists if lists is None else lists
        values = {**self.fixed, **{name: ",".join(tokens) for name, tokens in lists.items()}}
        return f"{self.kind}?" + "&".join(f"{name}={values[name]}" for name in self.names)


def plan(to_fetch: Mapping[str, str], merge_params: Mapping[str, frozenset[str]], max_chars: int) -> list[Search]:
    """The searches that answer `to_fetch` (key -> target), in the order of their first key.

    `merge_params`: for each key whose search may be merged, its token-list parameters."""
    slots: list[Search | _Merged] = []
    open_by_shape: dict[tuple, _Merged] = {}
    for key, target in to_fetch.items():
        parsed = _parsed(target, merge_params.get(key)) if max_chars > 0 else None
        if parsed is None:
            slots.append(Search((key,), target))
            continue
        kind, params, shape = parsed
        merged = open_by_shape.get(shape)
        if merged is not None:
            lists, grown = merged.joined(params)
            if merged.length + grown <= max_chars:
                merged.lists, merged.length = lists, merged.length + grown
                merged.keys.append(key)
                continue
        list_names = shape[2]  # the token lists this shape joins
        merged = _Merged(kind, tuple(name for name, _ in params),
                         {name: value for name, value in params if name not in list_names},
                         {name: [] for name in list_names}, [key])
        merged.lists = merged.joined(params)[0]
        merged.length = sent_length(merged.target())
        open_by_shape[shape] = merged
        slots.append(merged)
    return [slot if isinstance(slot, Search) else
            Search(tuple(slot.keys), to_fetch[slot.keys[0]] if len(slot.keys) == 1 else slot.target())
            for slot in slots]


def _parsed(target: str, lists: frozenset[str] | None) -> tuple[str, list[tuple[str, str]], tuple] | None:
    """(type, parameters, shape) of a relative search whose parameters are each named once."""
    if lists is None or target.lower().startswith(("http://", "https://")):
        return None
    kind, mark, query = target.partition("?")
    if not mark or not query or "/" in kind:
        return None
    params = [(name, value) for name, _, value in (p.partition("=") for p in query.split("&"))]
    names = [name for name, _ in params]
    if len(set(names)) != len(names):
        return None  # a repeated parameter is AND: not a list to join
    fixed = tuple(sorted((name, value) for name, value in params if name not in lists))
    return kind, params, (kind, fixed, tuple(sorted(name for name in names if name in lists)))
