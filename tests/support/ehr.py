"""What an EHR does with a service's discovery: resolve prefetch templates, run them.

Written apart from the service's own token code, as a second implementation: the
scenario tests pass only if both read the templates the same way.
"""

from __future__ import annotations

import datetime as dt
import re

from .fhir_server import FhirStore, run_query

_TOKEN = re.compile(r"\{\{(.*?)\}\}")


# The tokens CDS Hooks 2.0 defines besides {{context.<field>}}; a strict client knows no others.
USER_TOKENS = {"userPractitionerId": "Practitioner", "userPractitionerRoleId": "PractitionerRole",
               "userPatientId": "Patient", "userRelatedPersonId": "RelatedPerson"}


def resolve_token(token: str, context: dict, today: dt.date, date_tokens: bool = False) -> str | None:
    """A strict 2.0 client; with `date_tokens`, one that also resolves CRD's today() tokens."""
    token = token.strip()
    if token in USER_TOKENS:
        user = context.get("userId")
        prefix = USER_TOKENS[token] + "/"
        return user[len(prefix):] if isinstance(user, str) and user.startswith(prefix) else None
    if token.startswith("context."):
        value = context.get(token[len("context."):])
        return value if isinstance(value, str) else None
    m = re.fullmatch(r"today\(\)\s*(?:([+-])\s*(\d+)\s*days?)?", token)
    if m and date_tokens:
        delta = int(m.group(2) or 0) * (-1 if m.group(1) == "-" else 1)
        return (today + dt.timedelta(days=delta)).isoformat()
    raise AssertionError(f"the EHR does not understand the prefetch token {{{{{token}}}}}")


def build_prefetch(templates: dict[str, str], context: dict, store: FhirStore, today: dt.date,
                   date_tokens: bool = False, include: bool = True) -> dict:
    """Prefetch as a conformant EHR sends it: a value per key, null when it has nothing.
    `include`: the searches' `_include` answered (False: an EHR that ignores it)."""
    prefetch = {}
    for key, template in templates.items():
        values = [resolve_token(t, context, today, date_tokens) for t in _TOKEN.findall(template)]
        if any(v is None for v in values):
            continue  # cannot satisfy: the key is omitted
        query = _TOKEN.sub(lambda m: str(resolve_token(m.group(1), context, today, date_tokens)), template)
        prefetch[key] = run_query(store, query, include)
    return prefetch
