"""Who may call: the `[security]` settings, bearer JWT checks (CDS Hooks 2.0), JWKS from
configuration or jku, the jti replay guard. No Flask: the web layer asks and maps.

Public API:
    load(settings) -> SecurityConfig     the [security] table checked (ConfigurationError)
    check_startup(settings, config)      refuse an unsafe start (off loopback, no issuers)
    SecurityConfig, Issuer               the trusted issuers and the token rules
    TokenVerifier                        verify one token (Unauthenticated with the reason)
    KeyStore                             JWKS per issuer (configured, file, URL, jku)
    ReplayGuard                          jti seen before -> refused
    open_replay_guard(settings)          the replay store in the service's database (every worker, every replica)
    is_loopback(host)
"""

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

__all__ = ["Issuer", "KeyStore", "ReplayGuard", "SecurityConfig", "TokenVerifier", "check_startup", "is_loopback",
           "load", "open_replay_guard"]
