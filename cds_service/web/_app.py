"""The Flask application factory: the composition root of the HTTP service."""

from __future__ import annotations

import atexit
import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask
from flask_cors import CORS

from cds_service import _native, config, feedback, fhirpath, knowledge, ops, security, service
from cds_service.data import FetchSettings, HttpTransport, Transport
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
from cds_service.web._large import LargeCalls
from cds_service.web._state import Clock, State, install

log = logging.getLogger(__name__)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# Medication reads a call may add to its keys (one per distinct drug referenced but not sent).
FETCH_READS_ALLOWANCE = 16
# Calls of one process whose every key and read can be in flight at once. Not `threads`
# (4): each GET past what the FHIR server's listen queue holds (often 128) waits a SYN
# retransmit (1 s), and an EHR asked for 200 searches at once by one worker may throttle.
# A third concurrent fetching call's keys wait for free threads (a round trip more).
FETCH_CALLS_AT_ONCE = 2


def fetch_threads(settings: config.Settings, kb: KnowledgeBase) -> int:
    """The fetch executor's size: `fetch_workers`, or (0) enough threads for every key of
    FETCH_CALLS_AT_ONCE calls, each with its Medication reads, to be in flight at once
    (at least 64). Too few, and a call's last keys wait for its first to answer."""
    if settings.fetch_workers > 0:
        return settings.fetch_workers
    keys = max((sum(1 for r in s.plan.requirements if r.template is not None and not r.derived_from)
                for s in kb.services.values()), default=0)
    return max(64, FETCH_CALLS_AT_ONCE * (keys + FETCH_READS_ALLOWANCE))


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
    try:
        compiled = _native.check()  # a compiled module that is not its source stops start-up
    except _native.BuildMismatch as exc:
        raise ConfigurationError(str(exc)) from None
    log.info("request path modules: " + (f"{len(compiled)} compiled" if compiled else "Python"),
             extra={"event": "native_modules", "compiled": list(compiled)})
    security_config = security.load(settings)
    ops.admin_token(settings)  # a malformed reload credential stops start-up
    kb = kb or knowledge.load(settings.directories, settings.canonical_base, settings.prefetch_date_tokens)
    knowledge.settle(kb)
    _health.check_go_live(settings, kb, production)  # before the database and the thread pools open
    secret = feedback.service_secret(settings, production)  # the production server stops without it
    if settings.suppress_scope not in ("patient", "patient+user"):
        raise ConfigurationError("setting suppress_scope (MM_CDS_SUPPRESS_SCOPE): must be patient or patient+user")
    if settings.fetch_merge_max_chars < 0:
        raise ConfigurationError("setting fetch_merge_max_chars (MM_CDS_FETCH_MERGE_MAX_CHARS): must be 0 (one search "
                                 "per key) or more")
    if settings.large_request_bytes < 0:
        raise ConfigurationError("setting large_request_bytes (MM_CDS_LARGE_REQUEST_BYTES): must be 0 (no limit) or more")
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
            transport=transport or HttpTransport(),
            # threads start as needed (ThreadPoolExecutor): an idle worker holds few
            executor=ThreadPoolExecutor(max_workers=fetch_threads(settings, kb), thread_name_prefix="fhir-fetch"),
            timeout=settings.fetch_timeout,
            max_pages=settings.fetch_max_pages,
            max_bytes=settings.fetch_max_bytes,
            merge_max_chars=settings.fetch_merge_max_chars,
        ),
        clock=clock or utc_now,
        security=guard,
        feedback=writer,
        keys=feedback.Keys(secret),
        history=history,
        large_calls=LargeCalls(settings.large_request_bytes),
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
