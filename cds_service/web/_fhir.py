"""The knowledge as a read-only FHIR R4 server, and PlanDefinition/$apply, under /fhir.

    GET  /fhir/metadata                          CapabilityStatement
    GET  /fhir/{type}/{id}                       read
    GET  /fhir/{type}[?url=...][&_id=...]        search: a searchset Bundle (no parameter: all)
    POST /fhir/PlanDefinition/{id}/$apply        Parameters in, CarePlan out (see apply.py)
    POST /fhir/PlanDefinition/$apply[?url=...]   the same, the PlanDefinition named by url

Types: PlanDefinition, ActivityDefinition, Library, ValueSet, CodeSystem, as loaded (site
directories included: a site's replacement is what is served). What is served is the
KnowledgeBase the request started with, like the hooks.
"""

from __future__ import annotations

import datetime as dt
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Response, request

from cds_service import service
from cds_service.errors import InvalidRequest, NotFound
from cds_service.knowledge import KINDS, KnowledgeBase, Plan
from cds_service.web import _jsonio as jsonio
from cds_service.web._hooks import read_json
from cds_service.web._state import state

bp = Blueprint("fhir", __name__, url_prefix="/fhir")
FHIR_JSON = "application/fhir+json"
SEARCH_PARAMS = {"url": "uri", "_id": "token", "version": "token"}
APPLY_DEFINITION = "http://hl7.org/fhir/OperationDefinition/PlanDefinition-apply"


def fhir(body: dict[str, Any], status: int = 200) -> Response:
    return Response(jsonio.dumps(body), status=status, mimetype=FHIR_JSON)


@bp.get("/metadata")
def metadata() -> Response:
    resources = []
    for kind in KINDS:
        entry: dict[str, Any] = {
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": name, "type": kind_} for name, kind_ in SEARCH_PARAMS.items()],
        }
        if kind == "PlanDefinition":
            entry["operation"] = [{"name": "apply", "definition": APPLY_DEFINITION}]
        resources.append(entry)
    return fhir({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.date.today().isoformat(),
        "kind": "instance",
        "software": {"name": "mm-cds", "version": _version()},
        "implementation": {"description": "Myeloma T-cell immunotherapy knowledge: read-only, with $apply",
                           "url": request.url_root.rstrip("/") + "/fhir"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "resource": resources}],
    })


def _version() -> str:
    try:
        return version("mm-cds")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise NotFound(f"resource type '{kind}' is not served here (only {', '.join(KINDS)})")


@bp.get("/<kind>/<rid>")
def read(kind: str, rid: str) -> Response:
    _check_kind(kind)
    for resource in state().kb.resources(kind):
        if resource.get("id") == rid:
            return fhir(resource)
    raise NotFound(f"{kind}/{rid} is not in the loaded knowledge")


@bp.get("/<kind>")
def search(kind: str) -> Response:
    _check_kind(kind)
    unknown = sorted(set(request.args) - set(SEARCH_PARAMS))
    if unknown:
        raise InvalidRequest(f"unsupported search parameter(s): {', '.join(unknown)} "
                             f"(supported: {', '.join(SEARCH_PARAMS)})", field=unknown[0])
    found = [r for r in state().kb.resources(kind) if _matches(r, request.args)]
    base = request.url_root.rstrip("/") + "/fhir"
    return fhir({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                 "link": [{"relation": "self", "url": request.url}],
                 "entry": [{"fullUrl": f"{base}/{kind}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                           for r in found]})


def _matches(resource: dict, args: Any) -> bool:
    url, _, pinned = (args.get("url") or "").partition("|")
    wanted_version = args.get("version") or pinned
    if url and resource.get("url") != url:
        return False
    if args.get("_id") and resource.get("id") not in args.get("_id").split(","):
        return False
    return not wanted_version or resource.get("version") == wanted_version


@bp.post("/PlanDefinition/<rid>/$apply")
def apply_instance(rid: str) -> Response:
    kb = state().kb
    plan = next((p for p in kb.plans.values() if p.id == rid), None)
    if plan is None:
        raise NotFound(f"PlanDefinition/{rid} is not in the loaded knowledge")
    return _apply(kb, plan, service.parameters(read_json()))


@bp.post("/PlanDefinition/$apply")
def apply_type() -> Response:
    kb = state().kb
    params = service.parameters(read_json())
    url, _, pinned = service.canonical_url(params, request.args.get("url")).partition("|")
    plan = kb.plans.get(url)
    if plan is None or (pinned and plan.version != pinned):
        raise NotFound(f"no PlanDefinition with url {url}" + (f" and version {pinned}" if pinned else ""))
    return _apply(kb, plan, params)


def _apply(kb: KnowledgeBase, plan: Plan, params: dict[str, list[dict]]) -> Response:
    current = state()
    return fhir(service.apply(kb, plan, params, current.clock(), current.fetch))
