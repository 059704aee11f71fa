"""The Flask application factory."""

from __future__ import annotations

import atexit
import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from flask_cors import CORS

from . import config, knowledge, logs, security, units
from .assemble import FetchSettings
from .auth_http import Guard, build_guard
from .feedback_writer import Writer, open_writer
from .fetch import RequestsTransport, Transport
from .knowledge import KnowledgeBase

log = logging.getLogger(__name__)
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class State:
    """What the request handlers share: settings, the knowledge base, the fetch pool, the
    token checker and the feedback writer."""

    settings: config.Settings
    kb: KnowledgeBase
    fetch: FetchSettings
    clock: Clock
    security: Guard
    feedback: Writer


def state() -> State:
    return current_app.extensions["mm_cds"]


def create_app(
    settings: config.Settings | dict[str, Any] | None = None,
    *,
    kb: KnowledgeBase | None = None,
    transport: Transport | None = None,
    clock: Clock | None = None,
) -> Flask:
    """Build the service. Knowledge is loaded and validated here: a bad artifact raises
    KnowledgeError; unusable or unsafe settings (security, feedback database) raise
    ConfigurationError; either way the service does not start."""
    if not isinstance(settings, config.Settings):
        settings = config.load(settings)
    logs.configure(settings.log_level)
    guard = build_guard(security.load(settings), settings.public_base_url)
    kb = kb or knowledge.load(settings.directories, settings.canonical_base)
    knowledge.settle()
    writer = open_writer(settings)
    atexit.register(writer.close)  # queued card records and feedback reach the database
    units.warm_up()
    app = Flask(__name__, static_folder=None)  # serves no files: no undescribed /static route
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.extensions["mm_cds"] = State(
        settings=settings,
        kb=kb,
        fetch=FetchSettings(
            transport=transport or RequestsTransport(),
            executor=ThreadPoolExecutor(max_workers=settings.fetch_workers, thread_name_prefix="fhir-fetch"),
            timeout=settings.fetch_timeout,
            max_pages=settings.fetch_max_pages,
            max_bytes=settings.fetch_max_bytes,
        ),
        clock=clock or utc_now,
        security=guard,
        feedback=writer,
    )
    CORS(
        app,
        origins=list(settings.cors_origins),
        allow_headers=["Authorization", "Content-Type", "X-CDS-Explain"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )
    from . import auth_http, errors_http, feedback_api, health, hooks_api, metrics, openapi

    app.register_blueprint(hooks_api.bp)
    app.register_blueprint(feedback_api.bp)
    from . import fhir_api, reload, ui

    app.register_blueprint(fhir_api.bp)  # /fhir: the knowledge, and PlanDefinition/$apply
    app.register_blueprint(reload.bp)  # POST /admin/reload (loopback only)
    app.register_blueprint(ui.bp)  # GET /: catalogue and "try it"
    app.register_blueprint(health.bp)
    auth_http.register(app, guard)
    metrics.register(app, kb)
    openapi.register(app, list(kb.services.values()))
    errors_http.register(app)
    return app
