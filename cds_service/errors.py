"""Every error the service raises on purpose, as one tree.

    CdsError
    ├── KnowledgeError            a knowledge artifact is invalid: start-up stops
    │     .problems: list[Problem] (file, resource id, element, message)
    ├── ConfigurationError        the settings are unusable or unsafe (bad [security] table,
    │   │                         off-loopback without trusted issuers, database unreachable):
    │   │                         start-up stops
    │   └── IncompatibleLibrary   an installed library is not the version this package patches
    │                             (fhirpathpy: fhirpath/ replaces its internals): import stops
    ├── RequestError              the caller sent something we cannot use -> HTTP 4xx
    │   ├── InvalidRequest        400: body or field invalid (names the field)
    │   ├── Unauthenticated       401: bearer JWT missing where required, or refused; the
    │   │                         answer carries WWW-Authenticate with the reason
    │   ├── Forbidden             403: known caller, not allowed (admin reload off the host)
    │   ├── NotFound              404: no such resource, scenario or service
    │   │   └── ServiceNotFound   404: no CDS service with that id
    │   ├── PayloadTooLarge       413: body over the configured limit
    │   └── DataUnavailable       412: required data neither prefetched nor fetchable
    ├── StoreUnavailable          the feedback database did not commit in time -> HTTP 503
    │                             (the write stays queued; the client's retry is idempotent)
    ├── StoreRejected             the feedback database refused rows: our bug -> HTTP 500
    ├── ScenarioError             a scenario file is unusable (mm-cds test/explain, the page)
    ├── UnsafeUrl                 (security) a URL that cannot be compared safely: userinfo,
    │                             '.'/'..' segments, percent-encoded dots, not http(s)
    ├── ArtifactError             raised while compiling one expression or template, mapped by
    │   │                         the loader to a Problem (file, id, element) in KnowledgeError
    │   ├── FhirPathSyntaxError   (fhirpath) an expression does not parse
    │   ├── UnitError             (fhirpath) not UCUM, or units that do not convert
    │   ├── TemplateError         (knowledge) a prefetch token this service cannot resolve
    │   └── ExpansionError        (knowledge) a value set that cannot be expanded
    ├── EvaluationError           (fhirpath) an expression failed on this request's data: the
    │                             engine records it in the trace and counts the condition false
    └── FetchError                one FHIR query (or a JWKS download) failed (timeout, HTTP
                                  status, bad JSON); data assembly turns it into
                                  DataUnavailable, token checking into Unauthenticated
          .kind: one of FETCH_KINDS (a metrics label), .reason: the text the 412 quotes,
          .status: the HTTP status of an http_status failure

Evaluation never raises for clinical data: a condition that errors counts as false and
is recorded in the trace.
"""

from __future__ import annotations

from dataclasses import dataclass


class CdsError(Exception):
    """Root of every error this package raises deliberately."""


@dataclass(frozen=True)
class Problem:
    """One defect in one knowledge artifact."""

    file: str
    resource: str  # "PlanDefinition/mm-tcell-order" or "" when the file did not parse
    element: str  # FHIR element path or the FHIRPath expression at fault
    message: str

    def __str__(self) -> str:
        parts = [self.file]
        if self.resource:
            parts.append(self.resource)
        if self.element:
            parts.append(self.element)
        return ": ".join(parts) + f": {self.message}"


class KnowledgeError(CdsError):
    """The knowledge artifacts do not validate; the service must not start."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the knowledge artifacts:\n{lines}")


class ArtifactError(CdsError, ValueError):
    """A defect found while compiling one expression, unit, template or value set."""


class StoreRejected(CdsError):
    """The feedback database refused rows: a server bug (answered 500, logged)."""


class ScenarioError(CdsError, ValueError):
    """A scenario file names what does not exist or cannot be read as a scenario."""


class UnsafeUrl(CdsError, ValueError):
    """A URL the allow-lists refuse to compare: userinfo, dot segments, encoded dots, ..."""


class RequestError(CdsError):
    """A problem with the caller's request; carries the HTTP status to answer with."""

    status = 400
    code = "invalid"  # OperationOutcome issue code

    def __init__(self, message: str, field: str | None = None):
        self.message = message
        self.field = field
        super().__init__(message)


class InvalidRequest(RequestError):
    status = 400
    code = "invalid"


class Unauthenticated(RequestError):
    """The bearer JWT is missing (where one is required) or was refused; message says why."""

    status = 401
    code = "login"


class Forbidden(RequestError):
    """The caller is known but may not do this (the admin reload from off the host)."""

    status = 403
    code = "forbidden"


class NotFound(RequestError):
    """No such resource, scenario or service."""

    status = 404
    code = "not-found"


class ServiceNotFound(NotFound):
    """No CDS service with that id (for that hook)."""


class PayloadTooLarge(RequestError):
    status = 413
    code = "too-costly"


class DataUnavailable(RequestError):
    status = 412
    code = "incomplete"

    def __init__(self, message: str, keys: list[str], fetches: list | None = None,
                 unresolved: list[str] | None = None):
        self.keys = keys
        self.fetches = fetches or []  # the fetches tried before giving up (FetchRecord), for metrics
        self.unresolved = unresolved or []  # medication references no source resolved
        super().__init__(message)


# Why a fetch failed, as a small fixed set: the `outcome` label of the fetch metrics.
FETCH_KINDS = ("timeout", "connection", "http_status", "not_json", "operation_outcome",
               "other_server", "too_large", "too_many_pages", "request")


class ConfigurationError(CdsError):
    """The settings cannot be used (or would be unsafe); the service must not start."""


class IncompatibleLibrary(ConfigurationError):
    """An installed library is not the exact version whose internals this package patches."""


class StoreUnavailable(CdsError):
    """The feedback database did not confirm a write in time."""


class FetchError(CdsError):
    """One FHIR query to the client's fhirServer failed."""

    def __init__(self, reason: str, kind: str = "request", status: int | None = None):
        assert kind in FETCH_KINDS, kind
        self.reason = reason
        self.kind = kind
        self.status = status  # the HTTP status of an http_status failure
        super().__init__(reason)
