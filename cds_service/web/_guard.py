"""The bearer-token guard the web layer holds: the security settings and the verifier."""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.security import SecurityConfig, TokenVerifier


@dataclass
class Guard:
    config: SecurityConfig
    verifier: TokenVerifier
