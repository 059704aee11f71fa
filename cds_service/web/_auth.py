"""The bearer JWT check in front of every endpoint (CDS Hooks 2.0 requires it on discovery
too), except the short list below. A refusal is a 401 with WWW-Authenticate and an
OperationOutcome saying why (see errors_http)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

from flask import Flask, request

from cds_service.data import RequestsTransport
from cds_service.errors import Unauthenticated
from cds_service.security import (
    KeyStore,
    ReplayGuard,
    SecurityConfig,
    TokenVerifier,
    is_loopback,
)
from cds_service.web._request import record

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


@dataclass
class Guard:
    config: SecurityConfig
    verifier: TokenVerifier
    public_base_url: str = ""


def build_guard(config: SecurityConfig, public_base_url: str, replay: ReplayGuard | None = None) -> Guard:
    keys = KeyStore(config, RequestsTransport(max_bytes=JWKS_MAX_BYTES))
    return Guard(config, TokenVerifier(config, keys, replay if replay is not None else ReplayGuard()), public_base_url.rstrip("/"))


def register(app: Flask, guard: Guard) -> None:
    @app.before_request
    def authenticate() -> None:
        record().authenticated = False
        if request.method in EXEMPT_METHODS or request.path in EXEMPT_PATHS:
            return
        token = _bearer_token()
        if token is None:
            if guard.config.require_token:
                _refuse(Unauthenticated("a bearer JWT is required (Authorization: Bearer <JWT>)"))
            log.warning("call without a bearer JWT accepted (token not required here)",
                        extra={"event": "auth_missing_allowed", "path": _route()})
            return
        try:
            claims = guard.verifier.verify(token, audience(guard))
        except Unauthenticated as exc:
            _refuse(exc)
        record().authenticated, record().client = True, claims["iss"]


def audience(guard: Guard) -> str:
    """The URL called, as the client should have put it in aud."""
    base = guard.public_base_url or request.root_url.rstrip("/")
    return base + request.path


def may_explain() -> bool:
    """An explain trace shows the reasoning over a patient's data: never to a remote caller
    who did not authenticate (loopback callers are the developer at the keyboard)."""
    return record().authenticated or is_loopback(request.remote_addr or "")


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
