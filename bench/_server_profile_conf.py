"""gunicorn settings for bench/server_profile.py: the production ones (cds_service.gunicorn_conf)
plus per-thread CPU accounting of the pieces of a request, written by each worker at exit to
$MM_BENCH_PROFILE_DIR/acct-<pid>.json, and by its feedback writer's child process
(feedback/_process.py) to acct-<worker pid>-writer.json; each worker names itself and its writer
child in pids-<pid>.json once forked, for the context switches read from /proc during the run. Bench only: it wraps private functions by name."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

from _writer_child import at_writer_child_close, cpu_of_this_process

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


def _dump(name: str, process: str) -> None:
    _spent[process] = cpu_of_this_process()
    with open(os.path.join(_OUT, f"acct-{name}.json"), "w") as fh:
        json.dump(_spent, fh)


def post_fork(server, worker) -> None:  # noqa: F811 (the wrappers, then the production hook)
    import cds_service.feedback._writer as writer

    # before the fork of the writer's child, which inherits these two
    writer.Writer._commit = _timed("issued-card rows written (writer process's thread)", writer.Writer._commit)
    at_writer_child_close(lambda pid: _dump(f"{pid}-writer", "feedback writer process, all threads"))
    _base.post_fork(server, worker)
    writer_pid = getattr(_base._state(server).feedback, "pid", None)  # None: the writer fell back to a thread
    with open(os.path.join(_OUT, f"pids-{os.getpid()}.json"), "w") as fh:
        json.dump({"worker": os.getpid(), "writer": writer_pid}, fh)
    import cds_service.feedback._lookup as lookup
    import cds_service.ops._logs as logs
    import cds_service.web._hooks as hooks

    hooks.call = _timed("service.call()", hooks.call)
    hooks.read_body = _timed("request body read", hooks.read_body)
    hooks.parse_body = _timed("request body parsed", hooks.parse_body)
    hooks.call_keys = _timed("keyed hashes of the call", hooks.call_keys)
    hooks.jsonio.response = _timed("response serialised", hooks.jsonio.response)
    lookup.History._query = _timed("suppression look-up (SQLite: the request thread)", lookup.History._query)
    logs.JsonFormatter.format = _timed("log lines formatted", logs.JsonFormatter.format)
    worker.handle = _timed("gunicorn handle (whole request)", worker.handle)


def post_worker_init(worker) -> None:
    worker.wsgi = _timed("Flask app (WSGI call)", worker.wsgi)


def worker_exit(server, worker) -> None:  # noqa: F811
    _base.worker_exit(server, worker)
    _dump(str(os.getpid()), "worker process, all threads")
