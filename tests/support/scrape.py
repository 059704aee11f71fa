"""Read a /metrics answer as Prometheus does (prometheus_client's text parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels`; 0 when there is none.
    Several matching samples (e.g. other label values) are summed."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
