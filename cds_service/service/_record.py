"""What one HTTP request records about itself, for its log line and its metrics.

Filled by the web layer from what the service returns (codes, dropped cards, the keys it
fetched and how each went); read once, after the response, by the request log and by the
metrics. Nothing here is patient data: ids of loaded services, recommendation codes,
prefetch key names from the artifacts, fixed outcome kinds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cds_service.data import FetchRecord


@dataclass
class RequestRecord:
    started: float = field(default_factory=time.perf_counter)
    service: str = ""
    hook: str | None = None
    hook_instance: str | None = None
    codes: list[str] | None = None
    dropped: int = 0
    fetches: list[FetchRecord] = field(default_factory=list)
    error_field: str | None = None
    client: str | None = None
    authenticated: bool = False
    auth_refused: str | None = None
    feedback: dict[str, int] | None = None
    suppressed: list[str] | None = None  # codes left out by repeat suppression
    suppression: str | None = None  # "store unavailable" when the look-up failed open

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def log_fields(self) -> dict[str, Any]:
        """The request log's fields beyond method, route and status (set ones only)."""
        out: dict[str, Any] = {}
        for name in ("service", "hook", "hook_instance", "codes", "error_field", "client", "auth_refused",
                     "feedback", "suppressed", "suppression"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.fetches:
            out["fetched"] = {f.key: f.outcome for f in self.fetches}
        return out
