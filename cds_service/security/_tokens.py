"""Checking one CDS Hooks 2.0 bearer JWT (spec section "Trusting CDS Clients").

In order, everything a forged token can fail without the key first (so a stranger cannot
make us download key sets): the header parses and names an allowed asymmetric alg and a
kid; the iss is a trusted issuer; a jku is under one of its jku_prefixes; exp, iat (not
in the future), jti and aud are present and acceptable as claimed (aud names the URL
called; exp - iat within max_lifetime). Then the key (by kid: configured, already
cached, or one rate-limited download of jwks_url or the jku) verifies the signature, the
claims are checked again as signed, and the jti must be new.
Every failure is Unauthenticated with a reason fit for the caller (no key material).
Times are the wall clock: the tokens' own clock, whatever the app's evaluation clock says.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jwt

from cds_service.errors import Unauthenticated
from cds_service.security._jwks import KeyStore, check_jku
from cds_service.security._replay import ReplayGuard
from cds_service.security._settings import SecurityConfig

REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]


class TokenVerifier:
    def __init__(self, config: SecurityConfig, keys: KeyStore, replay: ReplayGuard):
        self.config = config
        self.keys = keys
        self.replay = replay

    def verify(self, token: str, audience: str | Sequence[str]) -> dict[str, Any]:
        """The token's claims if it is acceptable for a call to `audience` (one of them)."""
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        header = _header(token)
        alg, kid, jku = header.get("alg"), header.get("kid"), header.get("jku")
        if alg not in self.config.algorithms:
            raise Unauthenticated(f"alg '{alg}' is not accepted (only {', '.join(self.config.algorithms)}; "
                                  "never none or HMAC)")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the JWT header has no kid")
        if jku is not None and not isinstance(jku, str):
            raise Unauthenticated("jku must be a URL string")
        unverified = _unverified_claims(token)
        iss = unverified.get("iss")
        issuer = self.config.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None or not isinstance(iss, str):
            raise Unauthenticated(f"issuer {_quoted(iss)} is not trusted")
        if jku is not None:
            check_jku(issuer, jku)
        self._check_claims(unverified, audiences, signed=False)  # before any key is looked for
        key = self.keys.key_for(issuer, kid, alg, jku)
        claims = self._decode(token, key, alg, iss)
        self._check_claims(claims, audiences, signed=True)
        if not self.replay.first_use(iss, claims["jti"], claims["exp"] + self.config.leeway):
            raise Unauthenticated("jti has already been used (replayed token)")
        return claims

    def _check_claims(self, claims: dict[str, Any], audiences: tuple[str, ...], signed: bool) -> None:
        """exp, iat, jti, aud and the lifetime; unsigned claims are checked the same way
        first, so a forged token is refused before any key is downloaded."""
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise Unauthenticated(f"claim '{name}' is required")
        if not all(isinstance(claims[k], (int, float)) and not isinstance(claims[k], bool) for k in ("exp", "iat")):
            raise Unauthenticated("exp and iat must be numbers (seconds since the epoch)")
        if not signed:
            now = time.time()
            if claims["exp"] < now - self.config.leeway:
                raise Unauthenticated("token expired (exp is past)")
            if claims["iat"] > now + self.config.leeway:
                raise Unauthenticated("token issued in the future (iat or nbf after now)")
        _check_audience(claims["aud"], audiences)
        if claims["exp"] - claims["iat"] > self.config.max_lifetime:
            raise Unauthenticated(f"token lifetime exp - iat exceeds {self.config.max_lifetime:.0f} s")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise Unauthenticated("jti must be a non-empty string")

    def _decode(self, token: str, key: Any, alg: str, iss: str) -> dict[str, Any]:
        try:
            return jwt.decode(token, key=key, algorithms=[alg], issuer=iss, leeway=self.config.leeway,
                              options={"require": REQUIRED_CLAIMS, "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired (exp is past)") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token issued in the future (iat or nbf after now)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"claim '{exc.claim}' is required") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"token refused: {exc}") from None


def _header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise Unauthenticated("not a JWT (header does not parse)") from None


def _unverified_claims(token: str) -> dict[str, Any]:
    # Read only to find the issuer and its keys; nothing here is trusted before decode().
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise Unauthenticated("not a JWT (payload does not parse)") from None


def _check_audience(aud: Any, expected: tuple[str, ...]) -> None:
    """aud (a string or an array of strings) must name the endpoint called (one of its URLs)."""
    values = aud if isinstance(aud, list) else [aud]
    if not all(isinstance(v, str) for v in values):
        raise Unauthenticated("aud must be a string or an array of strings")
    if not {e.rstrip("/") for e in expected} & {v.rstrip("/") for v in values}:
        raise Unauthenticated(f"aud {_quoted(values[0] if len(values) == 1 else values)} is not this "
                              f"endpoint's URL '{expected[0]}'")


def _quoted(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return "'" + (text if len(text) <= 120 else text[:117] + "...") + "'"
