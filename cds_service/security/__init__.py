"""Who may call: the `[security]` settings, bearer JWT checks (CDS Hooks 2.0), JWKS from
configuration or jku, the jti replay guard, which fhirServer a caller may name and who
may see the explain trace. No Flask: the web layer asks and maps.

Public API:
    load(settings) -> SecurityConfig     the [security] table checked (ConfigurationError)
    check_startup(settings, config)      refuse an unsafe start (off loopback, no issuers)
    SecurityConfig, Issuer               the trusted issuers and the token rules
    TokenVerifier                        verify one token (Unauthenticated with the reason)
    KeyStore                             JWKS per issuer (configured, file, URL, jku)
    ReplayGuard                          jti seen before -> refused
    open_replay_guard(settings)          the replay store in the service's database (every worker, every replica)
    check_fhir_server(config, iss, url, development)   a fhirServer this caller may not name -> 400/403
    may_explain(config, iss, peer, headers)   whether the explain trace may be returned
    development_open(config)             loopback, no trusted issuer, no allow_insecure: permissive
    development_caller(config, peer, headers)   ... and a loopback peer without forwarding headers
    normalise_url(url), under_prefix(url, prefix)   URL normal form (UnsafeUrl) and prefix match
    FORWARDING_HEADERS                   headers a proxy adds (X-Forwarded-For, Forwarded, X-Real-IP)
    is_loopback(host)
"""

from cds_service.security._access import (
           FORWARDING_HEADERS,
           check_fhir_server,
           development_caller,
           development_open,
           may_explain,
)
from cds_service.security._jwks import KeyStore
from cds_service.security._replay import ReplayGuard, open_replay_guard
from cds_service.security._settings import (
           Issuer,
           SecurityConfig,
           check_startup,
           is_loopback,
           load,
)
from cds_service.security._tokens import TokenVerifier
from cds_service.security._urls import normalise_url, under_prefix

__all__ = ["FORWARDING_HEADERS", "Issuer", "KeyStore", "ReplayGuard", "SecurityConfig", "TokenVerifier",
           "check_fhir_server", "check_startup", "development_caller", "development_open", "is_loopback", "load",
           "may_explain", "normalise_url", "open_replay_guard", "under_prefix"]
