"""What an authenticated (or not) caller may make the service do: which fhirServer it may
name (the service sends GETs there, with the caller's access token), and whether it may
see the explain trace. Pure functions of the SecurityConfig: the web layer asks.

The development default (bound to loopback, no trusted issuer) stays permissive: any
http(s) fhirServer (still normalised: no userinfo, no dot segments) and the explain
trace for a loopback caller that did not come through a proxy. With issuers, only what
the configuration names.
"""

from __future__ import annotations

from typing import Any

from cds_service.errors import Forbidden, InvalidRequest, UnsafeUrl
from cds_service.security._settings import SecurityConfig, is_loopback
from cds_service.security._urls import normalise_url, under_prefix

# A proxy in front says who the real caller is in one of these: then the peer address
# (the proxy, on loopback) says nothing about the caller.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def development_open(config: SecurityConfig) -> bool:
    """Bound to loopback with no trusted issuer (and not told to accept strangers): the
    developer's own machine."""
    return config.loopback and not config.issuers and not config.allow_insecure


def development_caller(config: SecurityConfig, peer: str, headers: Any) -> bool:
    """A call on a development server from a loopback peer that is not a proxy forwarding
    someone else's call (a proxy says so in X-Forwarded-For, Forwarded or X-Real-IP)."""
    return development_open(config) and is_loopback(peer) and \
        not any(headers.get(name) for name in FORWARDING_HEADERS)


def check_fhir_server(config: SecurityConfig, iss: str | None, server: Any, development: bool = False) -> None:
    """Refuse (4xx, field fhirServer) a fhirServer this caller may not name; None: absent.

    `iss` is the authenticated issuer, None for a call without a token; `development`:
    development_caller() said yes (then any normalised http(s) URL is fetched)."""
    if server is None:
        return
    if not isinstance(server, str):
        raise InvalidRequest("fhirServer: must be a URL string", field="fhirServer")
    try:
        normalise_url(server)
    except UnsafeUrl as exc:
        raise InvalidRequest(f"fhirServer: refused: {exc}", field="fhirServer") from None
    if any(under_prefix(server, prefix) for prefix in config.fhir_servers):
        return  # [security] fhir_servers: any caller may name these
    if iss is None:
        if development and development_open(config):
            return
        raise Forbidden("fhirServer: a call without a bearer JWT may not name this fhirServer "
                        "(only those in fhir_servers of [security] or of a trusted issuer are fetched)",
                        field="fhirServer")
    issuer = config.issuers.get(iss)
    if issuer is not None and any(under_prefix(server, prefix) for prefix in issuer.fhir_servers):
        return
    raise Forbidden(f"fhirServer: not one of the FHIR servers issuer '{iss}' may send (its fhir_servers); "
                    "nothing was fetched", field="fhirServer")


def may_explain(config: SecurityConfig, iss: str | None, peer: str, headers: Any) -> bool:
    """The explain trace shows reasoning over a patient's data: only to an issuer the
    configuration names (`explain = true`), or on a development loopback server to a
    loopback peer that is not a proxy forwarding someone else's call."""
    if iss is not None:
        issuer = config.issuers.get(iss)
        return issuer is not None and issuer.explain
    return development_caller(config, peer, headers)
