"""Settings: embedded defaults, then an optional TOML file, then MM_CDS_* environment variables.

    MM_CDS_CONFIG=path/to/settings.toml   the file (keys as in Settings, lower case;
                                          the [security] table is read by security.py)
    MM_CDS_HOST, MM_CDS_PORT, MM_CDS_SITE_DIRS (':'-separated), MM_CDS_EXPLAIN=1,
    MM_CDS_FETCH_TIMEOUT, MM_CDS_CANONICAL_BASE, MM_CDS_LOG_LEVEL, MM_CDS_DATABASE_URL,
    MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES (','-separated), MM_CDS_RXNAV_URL, ...
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from cds_service.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent  # a checkout's root; site-packages when installed

# What the package ships (docs/packaging.md): in a wheel, setup.py's build step copies these
# folders of the source tree into cds_service/_bundled/; in a checkout (an editable install)
# there is no copy and the source tree's own folders are read.
SHIPPED = {
    "plandefinitions": "plandefinitions",
    "valuesets": "valuesets",
    "scenarios": "tests/scenarios",  # the try-it page's scenarios, `mm-cds test`'s default
    "site": "examples/site",  # the example site the scenarios are written for
}


def _bundled_root() -> Path | None:
    bundled = resources.files("cds_service").joinpath("_bundled")
    return Path(str(bundled)) if bundled.is_dir() else None


def shipped(name: str) -> Path:
    """The folder `name` (a key of SHIPPED): the installed package's copy, else the checkout's."""
    bundled = _bundled_root()
    return bundled / name if bundled is not None else ROOT / SHIPPED[name]


def installed_from_wheel() -> bool:
    """True when the package carries its own knowledge (not a checkout)."""
    return _bundled_root() is not None


def _default_dirs() -> tuple[str, ...]:
    return (str(shipped("plandefinitions")), str(shipped("valuesets")))


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    canonical_base: str = "https://myeloma-cds.example.org/fhir"
    knowledge_dirs: tuple[str, ...] = field(default_factory=_default_dirs)
    site_dirs: tuple[str, ...] = ()  # read after knowledge_dirs; same url replaces
    fetch_timeout: float = 5.0  # seconds for all fetches of one call
    # 0: every key and Medication read of two calls in flight at once (the most keys one
    # call fetches, plus reads; at least 64): web/_app.fetch_threads
    fetch_workers: int = 0
    fetch_max_pages: int = 20
    # Missing keys whose searches differ only by their codes and statuses are fetched by one
    # search, at most this many characters long (data/_searches.py); 0: one search per key.
    fetch_merge_max_chars: int = 2000
    fetch_max_bytes: int = 16 * 1024 * 1024  # read from fhirServer in one call, all keys and pages
    # CRD-style {{today() - N days}} prefetch tokens, for clients known to resolve them. Off:
    # only CDS Hooks 2.0 tokens; the retrieves apply look-back windows to what arrives.
    prefetch_date_tokens: bool = False
    explain_enabled: bool = False
    cors_origins: tuple[str, ...] = ("*",)
    max_request_bytes: int = 5 * 1024 * 1024
    # Hook calls with a body this large or larger are parsed and evaluated one at a time per
    # process (web/_large.py: a worker's memory); 0: no limit.
    large_request_bytes: int = 256 * 1024
    log_level: str = "INFO"
    # gunicorn (mm-cds serve --prod); see cds_service/gunicorn_conf.py for why these defaults
    workers: int = 0  # 0: one per core, plus one
    threads: int = 4
    # A keep-alive connection is closed after this many requests (its client reconnects, and
    # the least busy worker takes it): spreads a client's connections over the workers (0: never)
    keepalive_requests: int = 25
    graceful_timeout: int = 30
    # The URL callers use to reach the service (scheme, host, port, any path prefix); the
    # JWT audience is built from it. Empty: from the request URL (fine without a proxy).
    public_base_url: str = ""
    # More URLs the service is reached at (an internal and an external name): aud may name any.
    # Off loopback with trusted issuers, public_base_url or this is required.
    public_base_urls: tuple[str, ...] = ()
    data_dir: str = "./data"  # the SQLite feedback database lives here
    database_url: str = ""  # postgresql://... : feedback in PostgreSQL instead of SQLite
    feedback_queue_size: int = 10000  # writes waiting for the background writer
    issued_card_days: float = 365.0  # issued-card records older than this are deleted (0: kept forever)
    # Repeat suppression (docs/feedback.md#repeat-suppression): the HMAC key of the patient,
    # user and encounter keys; the production server refuses to start without it.
    service_secret: str = ""
    repeat_suppression: bool = True  # false: every card on every call (scenario runs, demos)
    suppression_timeout: float = 0.05  # seconds the look-up may take; then fail open
    suppress_scope: str = "patient"  # or "patient+user"
    ignored_repeat_hours: float = 24.0  # a card never acted on comes back after this
    order_repeat_hours: float = 12.0  # O-1: order-sign after an overridden order-select card
    feedback_wait: float = 0.8  # seconds a feedback POST waits for its commit, then 503 (a thread is held meanwhile)
    # Go-live gate (knowledge/_golive.py): treatment value sets a site accepts with no code or
    # only unverified codes, by id, or "all". Empty: the production server refuses to start
    # while any is open. A documented site decision, logged at CRITICAL at every start-up.
    accept_unverified_treatment_codes: tuple[str, ...] = ()
    # `mm-cds terminology expand`: the RxNav REST base (NLM's public service; a site may run a mirror).
    rxnav_url: str = "https://rxnav.nlm.nih.gov/REST"
    security: dict[str, Any] = field(default_factory=dict)  # the [security] table
    config_file: str = ""  # set by load(): relative paths in [security] resolve beside it

    @property
    def directories(self) -> tuple[str, ...]:
        return tuple(self.knowledge_dirs) + tuple(self.site_dirs)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: str, value: Any) -> Any:
    if isinstance(value, str):
        if kind.startswith("tuple"):
            separator = os.pathsep if name.endswith("dirs") else ","
            return tuple(v.strip() for v in value.split(separator) if v.strip())
        if kind == "bool":
            return value.strip().lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def load(values: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from defaults < MM_CDS_CONFIG file < environment < explicit values."""
    environ = dict(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    path = environ.get("MM_CDS_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                merged.update(tomllib.load(fh))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"setting config (MM_CDS_CONFIG): cannot read {path}: {exc}") from None
        merged["config_file"] = str(Path(path).resolve())
    names = {f.name: f.type for f in fields(Settings)}
    for name in names:
        key = f"MM_CDS_{name.upper()}"
        if key in environ:
            merged[name] = environ[key]
    merged.update(values or {})
    unknown = sorted(set(merged) - set(names))
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(unknown)}")
    values = {}
    for name, value in merged.items():
        try:
            values[name] = _coerce(name, str(names[name]), value)
        except ValueError:
            raise ConfigurationError(
                f"setting {name} (MM_CDS_{name.upper()}): {value!r} is not a valid {names[name]}") from None
    return Settings(**values)
