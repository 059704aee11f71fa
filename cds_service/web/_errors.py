"""HTTP error answers: an OperationOutcome naming what was wrong, never a stack trace."""

from __future__ import annotations

import logging
import re

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from cds_service.errors import (
    DataUnavailable,
    RequestError,
    StoreUnavailable,
    Unauthenticated,
)
from cds_service.web._request import record

log = logging.getLogger(__name__)


def outcome(message: str, code: str = "invalid", fields: list[str] | None = None) -> dict:
    issue = {"severity": "error", "code": code, "diagnostics": message}
    if fields:
        issue["expression"] = fields
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def loggable_field(field: str | None) -> str | None:
    """A field path safe to log: a prefetch key is the caller's choice of text, so it is
    replaced (a key could carry anything, a name included); the rest are schema names."""
    if field and field.startswith("prefetch."):
        return "prefetch.<key>" + re.sub(r"^prefetch\.[^.\[]*", "", field)
    return field


def register(app: Flask) -> None:
    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        if isinstance(exc, DataUnavailable):
            record().fetches = exc.fetches
        fields = exc.keys if isinstance(exc, DataUnavailable) else ([exc.field] if exc.field else None)
        record().error_field = loggable_field(exc.field)
        response = jsonify(outcome(exc.message, exc.code, fields))
        response.status_code = exc.status
        if isinstance(exc, Unauthenticated):
            response.headers["WWW-Authenticate"] = (
                f'Bearer error="invalid_token", error_description="{_header_safe(exc.message)}"')
        return response

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable):
        response = jsonify(outcome(f"feedback not stored yet ({exc}); send it again", "transient"))
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = {404: "not-found", 405: "not-supported", 413: "too-costly"}.get(exc.code or 500, "processing")
        message = {
            404: "no such endpoint",
            405: "method not allowed on this endpoint",
            413: f"request body larger than {app.config.get('MAX_CONTENT_LENGTH')} bytes",
        }.get(exc.code or 500, exc.description or exc.name)
        response = jsonify(outcome(message, code))
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.error("unhandled error", exc_info=exc, extra={"event": "error"})
        return jsonify(outcome("internal error; the service log has the details", "exception")), 500


def _header_safe(text: str) -> str:
    """A quoted-string for WWW-Authenticate: printable ASCII, no quote or backslash."""
    cleaned = "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in text)
    return cleaned[:300]
