"""The OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json and /openapi.yaml.

cds_service/openapi.yaml is the source. Its request, context, response and feedback
schemas are references to the JSON Schemas the service validates with (schemas/*.json),
so the description cannot drift from what is enforced. The served copy inlines them, so
it stands alone, and adds concrete paths per loaded service (its call, with its hook and
context schema, and its feedback): a client or a fuzzer sees exactly what each accepts.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import yaml
from flask import Blueprint, Flask, Response

from cds_service.knowledge import Service
from cds_service.web._state import state, state_of

bp = Blueprint("openapi", __name__)
SCHEMAS = "#/components/schemas"


def source() -> dict[str, Any]:
    """openapi.yaml as written (external references to schemas/*.json left as they are)."""
    return copy.deepcopy(_parsed())


@functools.cache
def _parsed() -> dict[str, Any]:
    return yaml.safe_load(resources.files("cds_service").joinpath("openapi.yaml").read_text())


class Described(NamedTuple):
    """What the description says of one service."""

    id: str
    hook: str
    title: str


def build(services: Sequence[Described]) -> dict[str, Any]:
    doc = source()
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        ref = schema.get("$ref", "")
        if ref.startswith("schemas/"):
            schemas[name] = _inline(ref, f"{SCHEMAS}/{name}")
    generic = doc["paths"]["/cds-services/{serviceId}"]["post"]
    feedback = doc["paths"]["/cds-services/{serviceId}/feedback"]["post"]
    for service in services:
        if f"context-{service.hook}" in schemas:
            doc["paths"][f"/cds-services/{service.id}"] = {"post": _service_operation(generic, service)}
        doc["paths"][f"/cds-services/{service.id}/feedback"] = {"post": _concrete(feedback, service, "feedback")}
    return doc


def _inline(ref: str, at: str) -> dict[str, Any]:
    """A schemas/*.json file as a component: its own $defs references re-pointed to `at`."""
    schema = json.loads(resources.files("cds_service").joinpath(ref).read_text())
    # $id would make its references resolve against the schema's own URI, not this document.
    schema.pop("$schema", None)
    schema.pop("$id", None)
    return _repoint(schema, at)


def _repoint(node: Any, at: str) -> Any:
    if isinstance(node, dict):
        return {k: (at + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#/") else _repoint(v, at))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_repoint(item, at) for item in node]
    return node


def _concrete(generic: dict[str, Any], service: Described, verb: str) -> dict[str, Any]:
    """The generic operation for one service: its own id, no serviceId parameter."""
    operation = copy.deepcopy(generic)
    operation["operationId"] = f"{verb}-{service.id}"
    operation["summary"] = f"{verb} ({service.hook}): {service.title}"
    operation["parameters"] = [p for p in operation["parameters"] if not p["$ref"].endswith("/serviceId")]
    return operation


def _service_operation(generic: dict[str, Any], service: Described) -> dict[str, Any]:
    operation = _concrete(generic, service, "call")
    body = {"allOf": [{"$ref": f"{SCHEMAS}/request"},
                      {"properties": {"hook": {"const": service.hook},
                                      "context": {"$ref": f"{SCHEMAS}/context-{service.hook}"}}}]}
    operation["requestBody"]["content"]["application/json"]["schema"] = body
    return operation


@bp.get("/openapi.json")
def as_json() -> Response:
    return Response(state().openapi_json, content_type="application/json")


@bp.get("/openapi.yaml")
def as_yaml() -> Response:
    return Response(state().openapi_yaml, content_type="application/yaml")


def register(app: Flask, services: list[Service]) -> None:
    current = state_of(app)  # built once per set of services, answered from memory
    described = tuple(Described(s.id, s.hook, s.plan.title or s.id) for s in services)
    current.openapi_json, current.openapi_yaml = _rendered(described)
    app.register_blueprint(bp)



@functools.lru_cache(maxsize=8)
def _rendered(services: tuple[Described, ...]) -> tuple[str, str]:
    """The description as JSON and YAML text (each app serving the same services, a
    test's or a reload's, reuses the rendering: YAML dumping costs a tenth of a second)."""
    document = build(services)
    return json.dumps(document), yaml.safe_dump(document, sort_keys=False)
