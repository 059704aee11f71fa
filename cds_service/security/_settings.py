"""Who may call the service: the [security] table of the settings file, checked at start-up.

    [security]
    require_token = false      # default: required unless bound to loopback (or allow_insecure)
    allow_insecure = false     # bound off loopback with no trusted issuer: start anyway
    leeway = 60                # seconds of clock skew tolerated on exp and iat
    max_lifetime = 3600        # exp - iat beyond this is refused (bounds the jti memory)
    algorithms = ["ES384", "RS384"]   # a subset of ASYMMETRIC; default: all of them
    jwks_ttl = 300             # seconds a JWKS downloaded from a URL is reused
    jwks_timeout = 5.0         # seconds for one JWKS download
    jwks_refetch_interval = 30 # at least this many seconds between two key-set downloads per issuer

    [[security.issuers]]
    iss = "https://ehr.example.org"
    jwks_file = "ehr-jwks.json"        # or jwks = { keys = [...] } inline, or jwks_url = "https://..."
    jku_prefixes = ["https://ehr.example.org/.well-known/"]   # where a token's jku may point
    fhir_servers = ["https://ehr.example.org/fhir/"]  # the fhirServer URLs its calls may name
                                       # ([security] fhir_servers: what any caller may name)
    explain = false                    # its calls may ask for the explain trace

Off loopback, with trusted issuers, public_base_url (or public_base_urls) is required: the
JWT aud is checked against it, never against the request's Host header.

Everything is validated here, before the service starts: a problem raises
ConfigurationError naming the key, so a typo never silently weakens authentication.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds_service.config import Settings
from cds_service.errors import ConfigurationError, UnsafeUrl
from cds_service.security._urls import normalise_url

log = logging.getLogger(__name__)

# CDS Hooks 2.0 forbids `none` and every symmetric (HMAC) algorithm: only these verify.
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
KEYS = {"require_token", "allow_insecure", "leeway", "max_lifetime", "algorithms", "jwks_ttl",
        "jwks_timeout", "jwks_refetch_interval", "issuers", "fhir_servers",
        "admin_token"}  # the /admin/reload credential: checked and used by ops (issue 10 item 8)
ISSUER_KEYS = {"iss", "jwks", "jwks_file", "jwks_url", "jku_prefixes", "fhir_servers", "explain"}


@dataclass(frozen=True)
class Issuer:
    """One trusted CDS client: its keys given here, at a URL, or behind allowed jku URLs."""

    iss: str
    keys: tuple[dict[str, Any], ...] = ()  # from `jwks` or `jwks_file`, read at start-up
    jwks_url: str | None = None
    jku_prefixes: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] = ()  # normalised prefixes of the fhirServer it may send
    explain: bool = False  # its calls may receive the explain trace


@dataclass(frozen=True)
class SecurityConfig:
    issuers: dict[str, Issuer]
    require_token: bool
    allow_insecure: bool
    loopback: bool
    leeway: float = 60.0
    max_lifetime: float = 3600.0
    algorithms: tuple[str, ...] = ASYMMETRIC
    jwks_ttl: float = 300.0
    jwks_timeout: float = 5.0
    jwks_refetch_interval: float = 30.0
    public_base_urls: tuple[str, ...] = ()  # what aud may name (each + the path called)
    fhir_servers: tuple[str, ...] = ()  # fhirServer prefixes any caller may name (even without a token)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or "" (every interface): not loopback


def load(settings: Settings) -> SecurityConfig:
    """The [security] table as a SecurityConfig; refuses an unsafe start (see check_startup)."""
    table = settings.security
    if not isinstance(table, dict):
        raise ConfigurationError("security: must be a TOML table ([security] in the settings file)")
    problems = [f"security.{k}: unknown key" for k in sorted(set(table) - KEYS)]
    base = Path(settings.config_file).parent if settings.config_file else Path.cwd()
    issuers: dict[str, Issuer] = {}
    raw_issuers = table.get("issuers", [])
    if not isinstance(raw_issuers, list):
        problems.append("security.issuers: must be an array of tables ([[security.issuers]])")
        raw_issuers = []
    for i, raw in enumerate(raw_issuers):
        issuer = _issuer(raw, f"security.issuers[{i}]", base, problems)
        if issuer is not None:
            if issuer.iss in issuers:
                problems.append(f"security.issuers[{i}].iss: '{issuer.iss}' is listed twice")
            issuers[issuer.iss] = issuer
    algorithms = tuple(table.get("algorithms", ASYMMETRIC))
    refused = [a for a in algorithms if a not in ASYMMETRIC]
    if refused or not algorithms:
        problems.append(f"security.algorithms: {', '.join(map(str, refused)) or '(empty)'} not allowed; "
                        f"only asymmetric algorithms: {', '.join(ASYMMETRIC)}")
    numbers = {k: _number(table, k, default, problems) for k, default in
               (("leeway", 60), ("max_lifetime", 3600), ("jwks_ttl", 300), ("jwks_timeout", 5),
                ("jwks_refetch_interval", 30))}
    flags = {k: _flag(table, k, problems) for k in ("require_token", "allow_insecure")}
    bases = _public_bases(settings, problems)
    shared_servers = _fhir_servers(table.get("fhir_servers", []), "security.fhir_servers", problems)
    if problems:
        raise ConfigurationError("security configuration refused:\n" + "\n".join(f"  - {p}" for p in problems))
    loopback = is_loopback(settings.host)
    require = flags["require_token"] if "require_token" in table else not (loopback or flags["allow_insecure"])
    config = SecurityConfig(issuers=issuers, require_token=require, allow_insecure=flags["allow_insecure"],
                            loopback=loopback, algorithms=algorithms, public_base_urls=bases,
                            fhir_servers=shared_servers, **numbers)
    check_startup(settings, config)
    return config


def check_startup(settings: Settings, config: SecurityConfig) -> None:
    """Off loopback, no trusted issuer means anyone may call: refuse unless told explicitly."""
    if config.loopback:
        if not config.issuers:
            log.warning("no trusted JWT issuers: bound to loopback, calls without a token are accepted",
                        extra={"event": "security_loopback_open", "host": settings.host})
            log.warning("development default: any http(s) fhirServer a call names is fetched, and loopback "
                        "callers without forwarding headers get the explain trace (list [[security.issuers]] "
                        "with fhir_servers to restrict)", extra={"event": "security_fhir_open", "host": settings.host})
        return
    if config.issuers and not config.public_base_urls:
        raise ConfigurationError(
            f"public_base_url: required when listening on {settings.host or '(every interface)'} with trusted "
            "JWT issuers: the URL clients call (or public_base_urls, a list), against which the JWT aud is "
            "checked (never the request's Host header)")
    if not config.issuers and not config.allow_insecure:
        raise ConfigurationError(
            f"refusing to listen on {settings.host or '(every interface)'} without a trusted JWT issuer: "
            "add [[security.issuers]] to the settings file (see docs/security.md), bind to 127.0.0.1, "
            "or set allow_insecure = true in [security] to accept unauthenticated callers")
    if config.allow_insecure and not config.require_token:
        log.critical("INSECURE: bound off loopback and accepting calls without a bearer JWT "
                     "(security.allow_insecure = true)", extra={"event": "security_insecure", "host": settings.host})


def _issuer(raw: Any, where: str, base: Path, problems: list[str]) -> Issuer | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a table")
        return None
    problems += [f"{where}.{k}: unknown key" for k in sorted(set(raw) - ISSUER_KEYS)]
    iss = raw.get("iss")
    if not isinstance(iss, str) or not iss:
        problems.append(f"{where}.iss: is required (the token's exact iss)")
        return None
    sources = [k for k in ("jwks", "jwks_file", "jwks_url") if k in raw]
    if len(sources) > 1:
        problems.append(f"{where}: give one of jwks, jwks_file, jwks_url (found {', '.join(sources)})")
    prefixes = raw.get("jku_prefixes", [])
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        problems.append(f"{where}.jku_prefixes: must be an array of URL strings")
        prefixes = []
    for prefix in prefixes:
        problem = url_problem(prefix, need_path=True)
        if problem:
            problems.append(f"{where}.jku_prefixes: '{prefix}' {problem}")
    servers = _fhir_servers(raw.get("fhir_servers", []), f"{where}.fhir_servers", problems)
    explain = raw.get("explain", False)
    if not isinstance(explain, bool):
        problems.append(f"{where}.explain: must be true or false")
        explain = False
    if not sources and not prefixes:
        problems.append(f"{where}: no keys: give jwks, jwks_file or jwks_url, or jku_prefixes")
    keys: tuple[dict[str, Any], ...] = ()
    if "jwks" in raw:
        keys = checked_jwks(raw["jwks"], f"{where}.jwks", problems)
    if "jwks_file" in raw:
        keys = _jwks_file(raw["jwks_file"], f"{where}.jwks_file", base, problems)
    url = raw.get("jwks_url")
    if url is not None:
        problem = url_problem(url) if isinstance(url, str) else "must be a URL string"
        if problem:
            problems.append(f"{where}.jwks_url: {problem}")
    return Issuer(iss=iss, keys=keys, jwks_url=url, jku_prefixes=tuple(prefixes), fhir_servers=servers,
                  explain=explain)


def _fhir_servers(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        problems.append(f"{where}: must be an array of URL prefixes")
        return ()
    servers = []
    for prefix in value:
        # http is allowed anywhere (a FHIR server inside the same network): the EHR chose it
        problem = None
        try:
            normal = normalise_url(prefix)
            if urlsplit(prefix).query or urlsplit(prefix).fragment:
                problem = "must not have a query or fragment"
            elif not urlsplit(prefix).path.startswith("/"):
                problem = "must include the host's trailing '/' (and any path)"
            else:
                servers.append(normal)
        except UnsafeUrl as exc:
            problem = str(exc)
        if problem:
            problems.append(f"{where}: '{prefix}' {problem}")
    return tuple(servers)


def _public_bases(settings: Settings, problems: list[str]) -> tuple[str, ...]:
    """public_base_url and public_base_urls, each an http(s) URL, without a trailing '/'."""
    given = ([settings.public_base_url] if settings.public_base_url else []) + list(settings.public_base_urls)
    bases = []
    for base in given:
        name = "public_base_url" if base == settings.public_base_url else "public_base_urls"
        if urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).hostname:
            problems.append(f"{name}: '{base}' must be an http(s) URL (the JWT aud is built from it)")
            continue
        bases.append(base.rstrip("/"))
    return tuple(bases)


def _jwks_file(value: Any, where: str, base: Path, problems: list[str]) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, str):
        problems.append(f"{where}: must be a path")
        return ()
    path = (base / value).resolve()
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{where}: cannot read {path}: {type(exc).__name__}: {exc}")
        return ()
    return checked_jwks(document, f"{where} ({path})", problems)


def checked_jwks(document: Any, where: str, problems: list[str]) -> tuple[dict[str, Any], ...]:
    """The public signing keys of a JWK Set; private or symmetric keys are a problem."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        problems.append(f"{where}: not a JWK Set (an object with a non-empty 'keys' array)")
        return ()
    for i, key in enumerate(keys):
        problem = key_problem(key)
        if problem:
            problems.append(f"{where}: keys[{i}]: {problem}")
    return tuple(keys)


def key_problem(key: Any) -> str | None:
    """Why a JWK cannot be trusted to verify CDS Hooks tokens, or None."""
    if not isinstance(key, dict):
        return "not an object"
    if key.get("kty") not in ("RSA", "EC"):
        return f"kty {key.get('kty')!r} is not an asymmetric key type (RSA or EC)"
    if "d" in key:
        # A private key in the service's configuration means it leaked: never accept it.
        return "holds a private key ('d'): configure the public JWK Set only"
    if not isinstance(key.get("kid"), str):
        return "has no kid (tokens select their key by kid)"
    return None


def url_problem(url: str, need_path: bool = False) -> str | None:
    """https, or plain http to loopback only (keys fetched in clear text could be swapped)."""
    parts = urlsplit(url)
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        pass
    elif parts.scheme != "https" or not parts.hostname:
        return "must be an https URL (http only to a loopback host)"
    if need_path and not parts.path.startswith("/"):
        # "https://ehr.example.org" would also match "https://ehr.example.org.evil.net/..."
        return "must include the host's trailing '/' (and any path)"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def _number(table: dict[str, Any], key: str, default: float, problems: list[str]) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        problems.append(f"security.{key}: must be a number of seconds >= 0")
        return float(default)
    return float(value)


def _flag(table: dict[str, Any], key: str, problems: list[str]) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        problems.append(f"security.{key}: must be true or false")
        return False
    return value
