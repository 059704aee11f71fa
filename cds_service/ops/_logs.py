"""Structured JSON logs, one object a line. Callers pass only what is safe to keep:
service ids, hooks, hookInstance, codes, counts and timings; never patient data."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type and the frames, not the message: messages can quote request data.
            exc_type, _, tb = record.exc_info
            entry["exception"] = exc_type.__name__
            entry["stack"] = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(tb)][-8:]
        return json.dumps(entry, default=str)


class Summarised:
    """A warning that would otherwise repeat on every request: logged at its first occurrence,
    then at most once per `interval` seconds, with `count`, how often it happened since the
    line before (this time included). The signal stays; the log is not one line a call."""

    def __init__(self, logger: logging.Logger, interval: float):
        self.logger = logger
        self.interval = interval
        self._lock = threading.Lock()
        self._count = 0
        self._last: float | None = None

    def warning(self, msg: str, extra: dict[str, Any]) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if self._last is not None and now - self._last < self.interval:
                return
            count, self._count, self._last = self._count, 0, now
        self.logger.warning(msg, extra={**extra, "count": count})


def configure(level: str = "INFO", stream=None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mm_cds", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._mm_cds = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library warnings would otherwise be bare text on stderr among the JSON lines.
    logging.captureWarnings(True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
