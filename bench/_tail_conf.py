"""gunicorn settings for bench/tail.py: the production ones (cds_service.gunicorn_conf) plus,
in each worker, the wall-clock span and thread CPU of every request (gunicorn's handle),
written at the worker's exit to $MM_BENCH_TAIL_DIR/events-<pid>.json, and of every commit
of its feedback writer, written by the writer's child process (feedback/_process.py) to
events-<worker pid>-writer.json. With MM_BENCH_NO_WRITER=1 a commit writes nothing (its
rows are dropped, its waiters released): the same server without the database's work.
Bench only: it wraps private functions by name."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from _writer_child import at_writer_child_close

from cds_service import gunicorn_conf as _base
from cds_service.gunicorn_conf import *  # noqa: F403  (every production setting and hook)

_OUT = os.environ["MM_BENCH_TAIL_DIR"]
_events: list[tuple[str, float, float, float]] = []  # (what, start, end: perf_counter; thread CPU)
_lock = threading.Lock()


def _spanned(what: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _events.append((what, started, time.perf_counter(), time.thread_time() - cpu))
    return wrapper


def _no_commit(self: Any, batch: list) -> None:
    for job in batch:
        job.done.set()


def _dump(name: str) -> None:
    with open(os.path.join(_OUT, f"events-{name}.json"), "w") as fh:
        json.dump(_events, fh)


def post_fork(server, worker) -> None:  # noqa: F811 (the wrappers, then the production hook)
    import cds_service.feedback._writer as writer

    commit = _no_commit if os.environ.get("MM_BENCH_NO_WRITER") == "1" else writer.Writer._commit
    writer.Writer._commit = _spanned("commit", commit)  # before the fork: the writer's child has it
    at_writer_child_close(lambda pid: _dump(f"{pid}-writer"))
    _base.post_fork(server, worker)
    worker.handle = _spanned("request", worker.handle)


def worker_exit(server, worker) -> None:  # noqa: F811
    _base.worker_exit(server, worker)
    _dump(str(os.getpid()))
