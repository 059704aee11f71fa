"""GET /metrics, and every request's counts recorded from its RequestRecord."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request

from cds_service import ops
from cds_service.knowledge import KnowledgeBase
from cds_service.web._request import record

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    body, content_type = ops.scrape_metrics()
    return Response(body, content_type=content_type)


def _after_request(response: Response) -> Response:
    endpoint = request.url_rule.rule if request.url_rule else "(none)"
    ops.observe_request(endpoint, response.status_code, record())
    return response


def register(app: Flask, kb: KnowledgeBase) -> None:
    ops.set_knowledge(kb)
    app.after_request(_after_request)
    app.register_blueprint(bp)
