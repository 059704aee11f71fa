"""The key that verifies a token: chosen by kid among the issuer's configured keys, the
keys already downloaded for that issuer, or one download of its jwks_url or of the
token's jku (when that is under one of the issuer's jku_prefixes).

The iss, kid and jku of a token are read before its signature is checked, so a stranger
must not be able to make us hammer a client's key server (or the network at large):

* the token's cheap checks (alg, kid, iss, jku prefix, exp/iat/aud as claimed) run
  before key_for() is asked (see _tokens);
* a kid already known for the issuer (and fresh, within jwks_ttl) is used without any
  download, whatever jku the token names;
* at most one key-set download per issuer per jwks_refetch_interval (the cooldown):
  a kid still unknown within the cooldown is refused without a download;
* the caches are bounded: MAX_KEYS_PER_ISSUER keys per issuer, one lock and one
  cooldown clock per configured issuer (made at start-up; nothing grows per URL).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from cds_service.data import Transport
from cds_service.errors import FetchError, Unauthenticated, UnsafeUrl
from cds_service.security._settings import Issuer, SecurityConfig, key_problem
from cds_service.security._urls import normalise_url, under_prefix

MAX_KEYS_PER_ISSUER = 64
CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


@dataclass
class _Cached:
    key: dict[str, Any]
    fetched: float
    url: str  # where it was downloaded from


@dataclass
class _IssuerKeys:
    lock: threading.Lock
    keys: dict[str, _Cached]  # by kid; at most MAX_KEYS_PER_ISSUER
    last_download: float | None = None
    downloads: int = 0


class KeyStore:
    def __init__(self, config: SecurityConfig, transport: Transport, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.transport = transport
        self.clock = clock
        # One entry per configured issuer, made now: nothing a token says adds an entry.
        self._issuers = {iss: _IssuerKeys(threading.Lock(), {}) for iss in config.issuers}

    def downloads(self, iss: str) -> int:
        """How many key-set downloads were made for this issuer (metrics, tests)."""
        return self._issuers[iss].downloads

    def cached_keys(self, iss: str) -> int:
        return len(self._issuers[iss].keys)

    def key_for(self, issuer: Issuer, kid: str, alg: str, jku: str | None) -> Any:
        """The verification key, or Unauthenticated saying why there is none."""
        if jku is not None:
            check_jku(issuer, jku)
        found = _match(issuer.keys, kid, alg)
        url = jku if jku is not None else issuer.jwks_url
        if found is None and url is not None:
            found = self._downloaded(issuer, kid, alg, url)
        if found is None:
            raise Unauthenticated(f"unknown kid '{kid}': no key of issuer '{issuer.iss}' with that kid verifies {alg}")
        try:
            return jwt.PyJWK(found, algorithm=alg).key
        except jwt.PyJWKError as exc:
            raise Unauthenticated(f"key '{kid}' cannot verify {alg}: {exc}") from None

    def _downloaded(self, issuer: Issuer, kid: str, alg: str, url: str) -> dict[str, Any] | None:
        entry = self._issuers.get(issuer.iss)
        if entry is None:  # an Issuer not in this store's configuration: never downloads
            return None
        with entry.lock:  # one download per issuer at a time; the others wait and reuse it
            now = self.clock()
            cached = entry.keys.get(kid)
            if cached is not None and _match((cached.key,), kid, alg) and now - cached.fetched < self.config.jwks_ttl:
                return cached.key
            cooling = entry.last_download is not None and now - entry.last_download < self.config.jwks_refetch_interval
            if cooling:
                # Within the cooldown: a stale key is still served, an unknown kid is refused.
                return cached.key if cached is not None and _match((cached.key,), kid, alg) else None
            entry.last_download, entry.downloads = now, entry.downloads + 1
            keys = self._download(url)
            if keys is None:  # the server is down: keep serving what we had
                return cached.key if cached is not None and _match((cached.key,), kid, alg) else None
            if cached is not None and cached.url == url and kid not in {k.get("kid") for k in keys}:
                del entry.keys[kid]  # withdrawn by the client
            for key in keys:
                entry.keys[key["kid"]] = _Cached(key, now, url)
            while len(entry.keys) > MAX_KEYS_PER_ISSUER:
                oldest = min(entry.keys, key=lambda k: entry.keys[k].fetched)
                del entry.keys[oldest]
            fresh = entry.keys.get(kid)
            return fresh.key if fresh is not None and _match((fresh.key,), kid, alg) else None

    def _download(self, url: str) -> tuple[dict[str, Any], ...] | None:
        try:
            response = self.transport.get(url, {"Accept": "application/json"}, self.config.jwks_timeout)
            if response.status != 200:
                return None
            document = json.loads(response.body)
        except (FetchError, ValueError):
            return None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            return None
        return tuple(k for k in keys if key_problem(k) is None)


def check_jku(issuer: Issuer, jku: str) -> None:
    """A jku is followed only below one of the issuer's allowed prefixes (normalised)."""
    try:
        normal = normalise_url(jku)
    except UnsafeUrl as exc:
        raise Unauthenticated(f"jku '{jku[:120]}' is not a plain URL ({exc})") from None
    if "?" in normal or "#" in normal:
        raise Unauthenticated(f"jku '{jku[:120]}' is not a plain URL (query or fragment)")
    if not any(under_prefix(normal, prefix) for prefix in issuer.jku_prefixes):
        raise Unauthenticated(f"jku '{jku[:120]}' is not on the allow-list of issuer '{issuer.iss}'")


def _match(keys: tuple[dict[str, Any], ...], kid: str, alg: str) -> dict[str, Any] | None:
    """The key with this kid that can verify `alg` (kty, curve and any stated alg agree)."""
    for key in keys:
        if key.get("kid") != kid or key.get("use", "sig") != "sig":
            continue
        if key.get("alg", alg) != alg:
            continue
        if alg.startswith(("RS", "PS")) and key.get("kty") == "RSA":
            return key
        if alg.startswith("ES") and key.get("kty") == "EC" and key.get("crv") == CURVES.get(alg):
            return key
    return None
