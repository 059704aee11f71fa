"""The Flask application factory: the composition root of the HTTP service."""

from __future__ import annotations

import atexit
import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask
from flask_cors import CORS

from cds_service import config, feedback, fhirpath, knowledge, ops, security, service
from cds_service.data import FetchSettings, RequestsTransport, Transport
from cds_service.errors import ConfigurationError
from cds_service.feedback import open_writer
from cds_service.knowledge import KnowledgeBase
from cds_service.web import (
    _auth,
    _errors,
    _feedback,
    _fhir,
    _health,
    _hooks,
    _metrics,
    _openapi,
    _reload,
    _ui,
)
from cds_service.web._state import Clock, State, install


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def create_app(
    settings: config.Settings | dict[str, Any] | None = None,
    *,
    kb: KnowledgeBase | None = None,
    transport: Transport | None = None,
    clock: Clock | None = None,
    production: bool = False,
) -> Flask:
    """Build the service. Knowledge is loaded and validated here: a bad artifact raises
    KnowledgeError; unusable or unsafe settings (security, feedback database) raise
    ConfigurationError; either way the service does not start. `production` (wsgi.py,
    gunicorn) also refuses to start while the go-live gate is open (_health.check_go_live)."""
    if not isinstance(settings, config.Settings):
        settings = config.load(settings)
    ops.configure_logging(settings.log_level)
    security_config = security.load(settings)
    ops.admin_token(settings)  # a malformed reload credential stops start-up
    kb = kb or knowledge.load(settings.directories, settings.canonical_base, settings.prefetch_date_tokens)
    knowledge.settle(kb)
    _health.check_go_live(settings, kb, production)  # before the database and the thread pools open
    secret = feedback.service_secret(settings, production)  # the production server stops without it
    if settings.suppress_scope not in ("patient", "patient+user"):
        raise ConfigurationError("setting suppress_scope (MM_CDS_SUPPRESS_SCOPE): must be patient or patient+user")
    writer = open_writer(settings)
    history = feedback.open_history(settings)
    atexit.register(writer.close)  # queued card records and feedback reach the database
    # The jti replay store is the service's database: shared by every worker and replica.
    guard = _auth.build_guard(security_config, security.open_replay_guard(settings))
    fhirpath.warm_up()
    service.warm_up()  # the response validators, compiled before the first call (and before forking)
    app = Flask(__name__, static_folder=None)  # serves no files: no undescribed /static route
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider's setting
    install(app, State(
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
        keys=feedback.Keys(secret),
        history=history,
    ))
    CORS(
        app,
        origins=list(settings.cors_origins),
        allow_headers=["Authorization", "Content-Type", "X-CDS-Explain"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )
    app.register_blueprint(_hooks.bp)
    app.register_blueprint(_feedback.bp)
    app.register_blueprint(_fhir.bp)  # /fhir: the knowledge, and PlanDefinition/$apply
    app.register_blueprint(_reload.bp)  # POST /admin/reload (loopback only)
    app.register_blueprint(_ui.bp)  # GET /: catalogue and "try it"
    app.register_blueprint(_health.bp)
    _auth.register(app, guard)
    _metrics.register(app, kb)
    _openapi.register(app, list(kb.services.values()))
    _errors.register(app)
    return app
