"""The one accessor for what the handlers share (State). Blueprints import this module,
never the app factory; what one request records is in _request."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, current_app

from cds_service import config
from cds_service.data import FetchSettings
from cds_service.feedback import History, Keys, Writer
from cds_service.knowledge import KnowledgeBase
from cds_service.web._guard import Guard
from cds_service.web._large import LargeCalls

Clock = Callable[[], dt.datetime]


@dataclass
class State:
    """Settings, the knowledge base (swapped whole by a reload), the fetch pool, the token
    checker, the feedback writer and the clock."""

    settings: config.Settings
    kb: KnowledgeBase
    fetch: FetchSettings
    clock: Clock
    security: Guard
    feedback: Writer
    keys: Keys | None = None  # HMAC keys of the identifiers (B-0.7)
    history: History | None = None  # repeat suppression's look-up
    master_pid: int | None = None  # set in a gunicorn master: workers signal it to reload
    openapi_json: str = ""  # the served description, built once at start-up
    openapi_yaml: str = ""
    large_calls: LargeCalls = field(default_factory=lambda: LargeCalls(0))  # large bodies one at a time


_KEY = "mm_cds"


def install(app: Flask, current: State) -> None:
    app.extensions[_KEY] = current


def state_of(app: Flask) -> State:
    """The State of an app outside a request (gunicorn hooks, the CLI, tests)."""
    return app.extensions[_KEY]


def state() -> State:
    """The State of the app handling this request."""
    return current_app.extensions[_KEY]
