"""gunicorn settings for bench/server_profile.py: the production ones (cds_service.gunicorn_conf)
plus per-thread CPU accounting of the pieces of a request, written by each worker at exit to
$MM_BENCH_PROFILE_DIR/acct-<pid>.json. Bench only: it wraps private functions by name."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

from cds_service import gunicorn_conf as _base
from cds_service.gunicorn_conf import *  # noqa: F403  (every production setting and hook)

_OUT = os.environ["MM_BENCH_PROFILE_DIR"]
_spent: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def _timed(name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time() - started
            with _lock:
                _spent[name] += spent
                _spent[name + "#"] += 1
    return wrapper


def post_fork(server, worker) -> None:  # noqa: F811 (the production hook, then the wrappers)
    _base.post_fork(server, worker)
    import cds_service.feedback._lookup as lookup
    import cds_service.feedback._writer as writer
    import cds_service.ops._logs as logs
    import cds_service.web._hooks as hooks

    hooks.call = _timed("service.call()", hooks.call)
    hooks.read_json = _timed("request body read + parsed", hooks.read_json)
    hooks.call_keys = _timed("keyed hashes of the call", hooks.call_keys)
    hooks.jsonio.response = _timed("response serialised", hooks.jsonio.response)
    lookup.History._query = _timed("suppression look-up (its thread)", lookup.History._query)
    writer.Writer._commit = _timed("issued-card rows written (writer thread)", writer.Writer._commit)
    logs.JsonFormatter.format = _timed("log lines formatted", logs.JsonFormatter.format)
    worker.handle = _timed("gunicorn handle (whole request)", worker.handle)


def post_worker_init(worker) -> None:
    worker.wsgi = _timed("Flask app (WSGI call)", worker.wsgi)


def worker_exit(server, worker) -> None:  # noqa: F811
    _base.worker_exit(server, worker)
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    _spent["worker process, all threads"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(os.path.join(_OUT, f"acct-{os.getpid()}.json"), "w") as fh:
        json.dump(_spent, fh)
