"""The page at GET /: the catalogue, and a "try it" form that sends a scenario or a pasted
CDS Hooks request to a service and shows the cards and the explain trace.

Plain HTML, CSS and JavaScript in web/page/, served as one page (no build step). The page
calls the service's own public endpoints (discovery, the services with ?explain=1) plus
two helpers here: the bundled scenarios, and one scenario as the request an EHR would
send, its patient moved in time so that the scenario's `now` is the service's today.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from markupsafe import Markup

from cds_service import knowledge, scenarios
from cds_service.errors import NotFound
from cds_service.scenarios import patient_id
from cds_service.service import scenario_request
from cds_service.web._state import state

bp = Blueprint("ui", __name__, template_folder="page")


def _asset(name: str) -> Markup:
    # Our own files, inlined: one request for the page, and no static route to describe.
    return Markup(resources.files("cds_service").joinpath("web", "page", name).read_text())


@bp.get("/")
def page() -> str:
    current = state()
    codes, actions = knowledge.counts(current.kb)
    return render_template("index.html", css=_asset("page.css"), js=_asset("page.js"),
                           catalogue=Markup(knowledge.catalogue_table_html(current.kb)),
                           codes=codes, actions=actions, explain_enabled=current.settings.explain_enabled)


@functools.cache
def _bundled() -> dict[str, scenarios.Scenario]:
    """The bundled scenarios by id (`{file}-{n}`, as `mm-cds export-patients` names patients);
    read once per process."""
    folder = scenarios.DEFAULT_FOLDER
    if not folder.is_dir():  # a checkout without tests/scenarios: nothing to offer
        return {}
    return {patient_id(s, i): s for path in scenarios.scenario_files([folder])
            for i, s in enumerate(scenarios.load_file(path), start=1)}


@bp.get("/ui/scenarios")
def scenario_list() -> Response:
    return jsonify([{"id": sid, "name": s.name, "file": s.file.rsplit("/", 1)[-1], "hook": s.hook,
                     "expect": sorted(s.expect)} for sid, s in _bundled().items()])


@bp.get("/ui/scenarios/<sid>")
def scenario(sid: str) -> Response:
    found = _bundled().get(sid)
    if found is None:
        raise NotFound(f"no bundled scenario '{sid}'")
    current = state()
    kb = current.kb
    wanted = request.args.get("service") or found.service
    services = [s for s in kb.services.values() if s.hook == found.hook and (not wanted or s.id == wanted)]
    if not services:
        raise NotFound(f"no service '{wanted}' for {found.hook}")
    moved = found.as_of(current.clock().date())
    body: dict[str, Any] = scenario_request(moved, services[0].prefetch)
    return jsonify({"service": services[0].id, "expect": sorted(found.expect), "request": body})
