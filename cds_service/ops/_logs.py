"""Structured JSON logs, one object a line. Callers pass only what is safe to keep:
service ids, hooks, hookInstance, codes, counts and timings; never patient data."""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
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
