"""The bearer JWT check in front of every endpoint (CDS Hooks 2.0 requires it on discovery
too), except the short list below. A refusal is a 401 with WWW-Authenticate and an
OperationOutcome saying why (see errors_http)."""

from __future__ import annotations

import logging
from typing import NoReturn
from urllib.parse import urlsplit

from flask import Flask, request

from cds_service import ops
from cds_service.data import HttpTransport
from cds_service.errors import Unauthenticated
from cds_service.security import (
    KeyStore,
    ReplayGuard,
    SecurityConfig,
    TokenVerifier,
    is_loopback,
)
from cds_service.security import may_explain as explain_allowed
from cds_service.web._guard import Guard
from cds_service.web._request import record
from cds_service.web._state import state

log = logging.getLogger(__name__)

# Open to any caller: load-balancer probes and the metrics scraper cannot carry a JWT,
# and these answer nothing about patients or the knowledge.
EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics"})
# Not a CDS client's call: reload.py admits loopback callers only, and an EHR's JWT must not
# grant it; `mm-cds reload` on the host has no JWT to send.
EXEMPT_PATHS = EXEMPT_PATHS | {"/admin/reload"}
# CORS preflight: browsers never send Authorization on OPTIONS, and it runs no service.
EXEMPT_METHODS = frozenset({"OPTIONS"})
JWKS_MAX_BYTES = 1024 * 1024
# A call without a token, where none is required (loopback, allow_insecure), is a warning
# worth keeping but not one line per call (every call of a gateway that strips tokens):
# the first, then one a minute with the count (ops.Summarised).
MISSING_TOKEN_LOG_INTERVAL = 60.0


def build_guard(config: SecurityConfig, replay: ReplayGuard | None = None) -> Guard:
    keys = KeyStore(config, HttpTransport(max_bytes=JWKS_MAX_BYTES))
    return Guard(config, TokenVerifier(config, keys, replay if replay is not None else ReplayGuard()))




def register(app: Flask, guard: Guard) -> None:
    missing_token = ops.Summarised(log, MISSING_TOKEN_LOG_INTERVAL)

    @app.before_request
    def authenticate() -> None:
        record().authenticated = False
        if request.method in EXEMPT_METHODS or request.path in EXEMPT_PATHS:
            return
        token = _bearer_token()
        if token is None:
            if guard.config.require_token:
                _refuse(Unauthenticated("a bearer JWT is required (Authorization: Bearer <JWT>)"))
            missing_token.warning("calls without a bearer JWT accepted (token not required here)",
                                  {"event": "auth_missing_allowed", "path": _route()})
            return
        try:
            claims = guard.verifier.verify(token, audiences(guard))
        except Unauthenticated as exc:
            _refuse(exc)
        record().authenticated, record().client = True, claims["iss"]


def audiences(guard: Guard) -> tuple[str, ...]:
    """The URLs the client may have put in aud: each configured public base + the path.

    Without one (allowed on loopback only), the request's own URL, and only when its Host
    is a loopback name: a Host header is the caller's text, so a token minted for another
    service is never accepted by sending that service's name as Host."""
    if guard.config.public_base_urls:
        return tuple(base + request.path for base in guard.config.public_base_urls)
    try:
        host = urlsplit("//" + request.host).hostname or ""
    except ValueError:
        host = ""
    if not is_loopback(host):
        raise Unauthenticated(f"aud cannot be checked: the Host '{request.host[:100]}' is not a loopback name "
                              "and public_base_url is not set")
    return (request.root_url.rstrip("/") + request.path,)


def may_explain() -> bool:
    """An explain trace shows the reasoning over a patient's data: only to an issuer the
    configuration names, or on a development loopback server to a caller not behind a proxy."""
    iss = record().client if record().authenticated else None
    return explain_allowed(guard_config(), iss, request.remote_addr or "", request.headers)


def caller() -> str | None:
    """The authenticated issuer of this request, or None (no token)."""
    return record().client if record().authenticated else None


def guard_config() -> SecurityConfig:
    return state().security.config


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _refuse(Unauthenticated("Authorization must be 'Bearer <JWT>'"))
    return token.strip()


def _route() -> str:
    # The route template, never the path as sent: a caller can put anything in a URL.
    return request.url_rule.rule if request.url_rule else "(none)"


def _refuse(exc: Unauthenticated) -> NoReturn:
    record().auth_refused = exc.message
    log.warning("bearer JWT refused", extra={"event": "auth_refused", "path": _route(), "reason": exc.message})
    raise exc
