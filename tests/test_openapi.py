"""The OpenAPI 3.1 description: valid, complete (every route the app registers), and
describing the bodies with the very schemas the service validates with."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

import cds_service
from cds_service import web

PACKAGE = Path(cds_service.__file__).resolve().parent
SCHEMA_FILES = ("request", "context-order-select", "context-order-sign", "context-patient-view", "response",
                "feedback")


def described(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_the_served_description_is_valid_openapi_3_1_in_json_and_yaml(client):
    document = described(client)
    validate(document)  # raises OpenAPIValidationError
    assert document["openapi"] == "3.1.0"
    as_yaml = client.get("/openapi.yaml")
    assert as_yaml.content_type.startswith("application/yaml")
    assert yaml.safe_load(as_yaml.get_data(as_text=True)) == document


def test_the_shipped_file_is_valid_with_its_references_to_the_schema_files():
    source = web.openapi_source()
    assert {name: source["components"]["schemas"][name] for name in SCHEMA_FILES} == \
        {name: {"$ref": f"schemas/{name}.json"} for name in SCHEMA_FILES}
    validate(source, base_uri=PACKAGE.as_uri() + "/")  # resolves schemas/*.json beside it


def _template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "{}", path))


def test_every_route_the_app_registers_is_described(app, client):
    document = described(client)
    operations = {(_template(path), method.upper()) for path, item in document["paths"].items() for method in item}
    routes = {(_template(rule.rule), method) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes  # the app has routes at all
    assert routes - operations == set()


def test_the_bodies_are_described_by_the_schemas_the_service_validates_with(client):
    components = described(client)["components"]["schemas"]
    for name in SCHEMA_FILES:
        schema = json.loads((PACKAGE / "schemas" / f"{name}.json").read_text())
        for key in ("$schema", "$id"):
            schema.pop(key, None)
        # the same schema, its own references now pointing into the component
        text = json.dumps(schema).replace('"#/', f'"#/components/schemas/{name}/')
        assert components[name] == json.loads(text), name


def test_each_service_has_paths_for_its_calls_and_its_feedback(client):
    document = described(client)
    for service in client.get("/cds-services").get_json()["services"]:
        operation = document["paths"][f"/cds-services/{service['id']}"]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]["allOf"]
        assert body[0] == {"$ref": "#/components/schemas/request"}
        assert body[1]["properties"] == {"hook": {"const": service["hook"]},
                                         "context": {"$ref": f"#/components/schemas/context-{service['hook']}"}}
        assert set(operation["responses"]) >= {"200", "400", "404", "412", "413"}
        feedback = document["paths"][f"/cds-services/{service['id']}/feedback"]["post"]
        assert feedback["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/feedback"}
