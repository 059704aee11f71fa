"""Prefetch templates: built from data requirements, and their tokens resolved.

By default only the tokens CDS Hooks 2.0 defines are produced or accepted:
  {{context.patientId}}            a hook context field
  {{userPractitionerId}} (and the other user tokens), from context.userId
Relative look-back windows are then left out of the template: the retrieves apply them to
whatever arrives. With `date_tokens` (setting prefetch_date_tokens, for clients known to
resolve the Da Vinci CRD extension) these are produced and accepted too:
  {{today()}}, {{today() - 365 days}}, {{today() + 7 days}}
Medication searches are never filtered by code at the server: its `code` search does not
follow medicationReference, so the service resolves references and filters here. They ask
for the referenced Medications in the same answer (`_include=<type>:medication`).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from typing import Any

from cds_service.errors import ArtifactError
from cds_service.knowledge._model import MEDICATION_RECORD_TYPES, CodeFilter, DateFilter
from cds_service.knowledge._search_params import PATIENT_PARAM
from cds_service.knowledge._terminology import NDC

_TOKEN = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_TODAY = re.compile(r"^today\(\)(?:\s*([+-])\s*(\d+)\s*days?)?$")
_CONTEXT = re.compile(r"^context\.([A-Za-z][A-Za-z0-9]*)$")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class TemplateError(ArtifactError):
    pass


TWO_ZERO_TOKENS = ("context.<field>", *_USER_TOKENS)


def check_template(template: str, date_tokens: bool = False) -> None:
    """Raise TemplateError unless every token is one this service can resolve and, unless
    `date_tokens`, one CDS Hooks 2.0 defines."""
    if "{{" in _TOKEN.sub("", template) or "}}" in _TOKEN.sub("", template):
        raise TemplateError(f"unbalanced token braces in '{template}'")
    for token in _TOKEN.findall(template):
        if _TODAY.match(token) and not date_tokens:
            raise TemplateError(
                f"token '{{{{{token}}}}}' is a Da Vinci CRD extension, not CDS Hooks 2.0: leave relative "
                "windows to the dataRequirement's dateFilter (or set prefetch_date_tokens)"
            )
        if not (_TODAY.match(token) or _CONTEXT.match(token) or token in _USER_TOKENS):
            raise TemplateError(
                f"token '{{{{{token}}}}}' is not supported; use context.<field> or a user token"
                + (", or today() +/- N days" if date_tokens else "")
            )


def resolve(template: str, context: Mapping[str, Any], today: dt.date) -> str | None:
    """The query with its tokens replaced; None when a context field it needs is absent."""
    literals, tokens = _split(template)
    out = [literals[0]]
    for token, literal in zip(tokens, literals[1:], strict=True):
        value = _token_value(token, context, today)
        if value is None:
            return None
        out += (value, literal)
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _split(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A template as (literal text around the tokens, the tokens), split once: every call
    resolves every key's template."""
    parts = _TOKEN.split(template)  # the pattern's one group: literal, token, literal, ...
    return tuple(parts[0::2]), tuple(parts[1::2])


def _token_value(token: str, context: Mapping[str, Any], today: dt.date) -> str | None:
    kind, argument = _token_kind(token)
    if kind == "today":
        return (today + dt.timedelta(days=argument)).isoformat()
    if kind == "context":
        value = context.get(argument)
        return value if isinstance(value, str) and value else None
    user = context.get("userId")
    if kind == "user" and isinstance(user, str) and user.startswith(argument + "/"):
        return user.split("/", 1)[1]
    return None


@functools.lru_cache(maxsize=4096)
def _token_kind(token: str) -> tuple[str, Any]:
    """What a token reads, worked out once (every call resolves every key's template):
    ("today", offset in days), ("context", field), ("user", resource type) or ("none", None)."""
    if m := _TODAY.match(token):
        days = int(m.group(2) or 0)
        return "today", -days if m.group(1) == "-" else days
    if m := _CONTEXT.match(token):
        return "context", m.group(1)
    if token in _USER_TOKENS:
        return "user", _USER_TOKENS[token]
    return "none", None


def build_template(
    resource_type: str, code_filters: tuple[CodeFilter, ...], date_filters: tuple[DateFilter, ...],
    date_tokens: bool = False,
) -> str:
    """A FHIR search for one data requirement (the service re-filters what comes back).

    Without `date_tokens`, a relative window (valueDuration) is not in the search: the
    EHR may send older records, the retrieve drops them. Absolute dates stay."""
    if resource_type == "Patient":
        return "Patient/{{context.patientId}}"
    params = [f"{PATIENT_PARAM}={{{{context.patientId}}}}"]
    for cf in _server_filters(resource_type, code_filters):
        params.append(f"{cf.search_param}={','.join(_filter_codes(cf))}")
    for df in date_filters:
        if df.search_param is None:
            continue  # alternatives across parameters: filtered here, not by the server
        if df.days is not None and date_tokens:
            params.append(f"{df.search_param}=ge{{{{today() - {df.days} days}}}}")
        if df.start:
            params.append(f"{df.search_param}=ge{df.start}")
        if df.end:
            params.append(f"{df.search_param}=le{df.end}")
    if resource_type in MEDICATION_RECORD_TYPES:
        # the Medications the records reference, in the same answer: no read per reference
        # (a server that refuses the parameter is asked again without it: data/_fetch.py)
        params.append(f"_include={resource_type}:medication")
    return f"{resource_type}?" + "&".join(params)


def token_params(resource_type: str, code_filters: tuple[CodeFilter, ...]) -> frozenset[str]:
    """The parameters build_template makes of code filters: token lists, in which a comma
    is OR, so that the searches of several requirements can be answered by one search whose
    lists join theirs (data/_searches.py)."""
    return frozenset(cf.search_param for cf in _server_filters(resource_type, code_filters))


def _server_filters(resource_type: str, code_filters: tuple[CodeFilter, ...]) -> tuple[CodeFilter, ...]:
    if resource_type in MEDICATION_RECORD_TYPES:
        return ()  # fetched unfiltered by code; the retrieve filters by product here
    return tuple(cf for cf in code_filters if server_can_filter(cf))


def server_can_filter(cf: CodeFilter) -> bool:
    """Whether the EHR's token search can apply this filter without losing records.

    Value sets list NDC products (labeler-product), while records carry package codes;
    token search is exact, so a search by product NDC would miss them.
    """
    return cf.value_set is None or all(c.system != NDC for c in cf.value_set.concepts)


def _filter_codes(cf: CodeFilter) -> list[str]:
    tokens: list[str] = []
    if cf.value_set is not None:
        tokens.extend(f"{c.system}|{c.code}" for c in cf.value_set.concepts)
    tokens.extend(f"{system}|{code}" if system else code for system, code in sorted(cf.codes, key=str))
    return tokens
