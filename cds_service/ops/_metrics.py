"""Prometheus metrics, served at GET /metrics.

Labels are bounded on purpose: the endpoint is the route template, the service a loaded
service id (empty for an unknown one), the code a recommendation code from the artifacts;
never a patient, a URL or a value from the request.

Single process (`mm-cds serve`, tests): the default registry. Under gunicorn with several
workers each worker counts in its own memory-mapped files in PROMETHEUS_MULTIPROC_DIR and a
scrape, answered by any worker, sums them (prometheus_client multiprocess mode). The
variable must be set before prometheus_client is imported: cds_service/gunicorn_conf.py
does it, and clears the files of exited workers.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from cds_service.knowledge import KnowledgeBase
from cds_service.service import RequestRecord

# A call answered from prefetch costs 1-50 ms; fetching can take up to fetch_timeout (5 s).
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FETCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("mm_cds_requests", "HTTP requests answered", ["endpoint", "service", "status"])
LATENCY = Histogram("mm_cds_request_seconds", "Time to answer a request", ["endpoint", "service"],
                    buckets=LATENCY_BUCKETS)
CARDS = Counter("mm_cds_cards", "Cards issued, by service and recommendation code", ["service", "code"])
SUPPRESSED = Counter("mm_cds_suppressed_cards", "Cards (bundle members) left out by repeat suppression, by code",
                     ["service", "code"])
SUPPRESSION_UNAVAILABLE = Counter("mm_cds_suppression_unavailable", "Calls whose suppression look-up failed open",
                                  ["service"])
FETCHES = Counter("mm_cds_fhir_fetches", "Prefetch keys fetched from fhirServer, by outcome", ["outcome"])
FETCH_LATENCY = Histogram("mm_cds_fhir_fetch_seconds", "Time to fetch one prefetch key (all its pages)",
                          buckets=FETCH_BUCKETS)
ERRORS = Counter("mm_cds_errors", "Error answers by HTTP status, and cards dropped by the response schema",
                 ["kind"])
# "max" across processes: the master sets it once before forking; workers inherit nothing.
KNOWLEDGE = Gauge("mm_cds_knowledge_info", "The loaded knowledge (value 1), by fingerprint",
                  ["fingerprint", "services", "files"], multiprocess_mode="max")
KNOWLEDGE_LOAD = Gauge("mm_cds_knowledge_load_seconds", "Time to load and compile the knowledge artifacts",
                       multiprocess_mode="max")

_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per label set (labels are bounded, see
    above): a request counts about 20 samples, and `labels()` validates and locks each time."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children.setdefault(key, metric.labels(*labels))
    return child


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape() -> tuple[bytes, str]:
    """The exposition text (summed over the workers under gunicorn) and its content type."""
    registry = REGISTRY
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def set_knowledge(kb: KnowledgeBase, previous: KnowledgeBase | None = None) -> None:
    """The knowledge gauge says what is served; after a reload the previous set reads 0
    (labels cannot be removed in multiprocess mode)."""
    if previous is not None:
        KNOWLEDGE.labels(previous.fingerprint, str(len(previous.services)), str(len(previous.files))).set(0)
    elif not multiprocess_dir():  # (not implemented there) tests build several knowledge bases
        KNOWLEDGE.clear()
    KNOWLEDGE.labels(kb.fingerprint, str(len(kb.services)), str(len(kb.files))).set(1)
    KNOWLEDGE_LOAD.set(kb.load_seconds)


def observe_fetch(outcome: str, seconds: float) -> None:
    _child(FETCHES, outcome).inc()
    FETCH_LATENCY.observe(seconds)


def observe_request(endpoint: str, status: int, record: RequestRecord) -> None:
    """One request answered: its counts, latency, cards, drops and the fetches it made."""
    _child(REQUESTS, endpoint, record.service, str(status)).inc()
    _child(LATENCY, endpoint, record.service).observe(record.seconds())
    if status >= 400:
        _child(ERRORS, str(status)).inc()
    for code in record.codes or ():
        _child(CARDS, record.service, code).inc()
    for code in record.suppressed or ():
        _child(SUPPRESSED, record.service, code).inc()
    if record.suppression:
        _child(SUPPRESSION_UNAVAILABLE, record.service).inc()
    if record.dropped:
        _child(ERRORS, "card_dropped").inc(record.dropped)
    for fetch in record.fetches:
        observe_fetch(fetch.outcome, fetch.seconds)
