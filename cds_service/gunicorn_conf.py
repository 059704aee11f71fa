"""gunicorn settings for production: `make serve-prod`, `mm-cds serve --prod`, or

    gunicorn -c python:cds_service.gunicorn_conf cds_service.wsgi:app

Every name gunicorn knows is read from this module (other names must start with `_`).
The service's own settings (config.py: MM_CDS_* variables, the MM_CDS_CONFIG file) give:

  bind              host:port (default 127.0.0.1:8080); a different --bind is refused
  workers           `workers`, or one per core plus one (see below)
  threads           `threads` (4) per worker, gthread workers
  graceful_timeout  `graceful_timeout` (30 s): in-flight calls finish on SIGTERM
  pre_request       a keep-alive connection closes after `keepalive_requests` (25) requests

Memory: at most two glibc malloc arenas per process (_limit_malloc_arenas), unless
MALLOC_ARENA_MAX is set.
  loglevel          `log_level`

Why one worker per core plus one, not gunicorn's 2 x cores + 1: evaluation is CPU-bound
Python, serialised by the GIL within a process, so processes give the parallelism; the
waits (the FHIR fetches, a slow client) are covered by each worker's threads and the
fetch thread pool, not by extra processes, each of which holds its own copy of the
compiled knowledge. The extra worker keeps every core busy while one is briefly stalled.

preload_app: the knowledge is loaded and validated once, in the master, before any fork:
a bad artifact stops gunicorn with the problems logged and exit status 1, instead of
workers failing one by one.

Logs: gunicorn's own lines go through the service's JSON formatter; the access log is
off because the service logs one JSON line per request itself (status, latency,
service, codes; never patient data).

Feedback: the writer (a thread and a database connection) is opened in a child process of
each worker, after the fork, so its commits never hold the worker's interpreter lock; the
master's is closed before it (pre_fork, post_fork, worker_exit below; feedback/_process.py).

Metrics: prometheus_client multiprocess mode. PROMETHEUS_MULTIPROC_DIR must be set before
prometheus_client is first imported, so it is set here, before cds_service is imported:
if unset, a fresh private directory (removed at exit); if set by the operator, it is
emptied once at start (one directory per gunicorn instance). Files of exited workers are
marked dead so their live gauges disappear.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

_MASTER = os.getpid()


def _limit_malloc_arenas(count: int) -> None:
    """glibc gives each thread that allocates under contention an arena of its own (up to 8
    per core), and each keeps the high-water mark of what its threads once held: a worker's
    request, fetch, writer and look-up threads. Two arenas keep a worker that has answered
    10,000-resource charts about 5-10 MB smaller (bench: ~145 instead of ~152 MB) at no CPU
    cost (the GIL already serialises most allocation). Set first, before any thread starts;
    MALLOC_ARENA_MAX in the environment, which glibc reads itself, is left to decide."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-8, count)  # M_ARENA_MAX; no such symbol off glibc (musl, macOS)
    except (OSError, AttributeError):
        pass


_limit_malloc_arenas(2)


def _remove_own_metrics_dir(path: str) -> None:
    # Workers are forked from the master and run its atexit handlers too: only the master removes.
    if os.getpid() == _MASTER:
        shutil.rmtree(path, ignore_errors=True)


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _METRICS_DIR = tempfile.mkdtemp(prefix="mm-cds-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _METRICS_DIR
    # atexit, not on_exit: also when start-up fails (a bad artifact) after this module ran.
    atexit.register(_remove_own_metrics_dir, _METRICS_DIR)
else:
    _METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(_METRICS_DIR, exist_ok=True)
    for _name in os.listdir(_METRICS_DIR):  # counters of a previous run would be summed in
        if _name.endswith(".db"):
            os.remove(os.path.join(_METRICS_DIR, _name))

# Imported only now: cds_service imports prometheus_client (see the docstring).
from gunicorn.glogging import Logger as _GunicornLogger  # noqa: E402
from prometheus_client import multiprocess as _multiprocess  # noqa: E402

from cds_service import config as _config  # noqa: E402
from cds_service import web as _web  # noqa: E402  # the composition root: this file builds the server
from cds_service.feedback import open_worker_writer as _open_worker_writer  # noqa: E402
from cds_service.ops import JsonFormatter as _JsonFormatter  # noqa: E402

_settings = _config.load()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers)
    except AttributeError:
        return os.cpu_count() or 1


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class JsonLogger(_GunicornLogger):
    """gunicorn's logger with every handler formatted as one JSON object a line."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(_JsonFormatter())


bind = [_address(_settings.host, _settings.port)]
workers = _settings.workers or _cores() + 1
worker_class = "gthread"
threads = _settings.threads
preload_app = True
graceful_timeout = int(_settings.graceful_timeout)
timeout = 30  # gthread heartbeat; a call is bounded by fetch_timeout well before this
keepalive = 5  # behind a load balancer: fewer reconnects; keep it below the balancer's idle timeout
proc_name = "mm-cds"
logger_class = JsonLogger
loglevel = _settings.log_level.lower()
errorlog = "-"
accesslog = None
control_socket_disable = True  # no gunicornc; two instances on one host would share its socket path


def on_starting(server) -> None:
    """Listen only where the settings say: the JWT start-up rule (no token needed only on
    loopback) judged the `host` setting, so a --bind elsewhere would skip it."""
    if list(server.cfg.bind) != bind:
        server.log.critical(f"refusing to bind {', '.join(server.cfg.bind)}: set MM_CDS_HOST and MM_CDS_PORT "
                            f"(or host/port in MM_CDS_CONFIG) instead of --bind; the settings say {bind[0]}",
                            extra={"event": "startup_failed"})
        sys.exit(1)


# The feedback writer is a thread and a database connection: neither survives a fork, so
# the master's (opened by create_app during preload) is closed before the first fork and
# each worker opens its own. Without this, feedback in a worker waits and answers 503.
def _state(server):
    return _web.state_of(server.app.wsgi())  # the preloaded app


def pre_fork(server, worker) -> None:
    _state(server).feedback.close()  # a no-op once closed


def post_fork(server, worker) -> None:
    state = _state(server)
    # The master migrated the schema before forking; a worker does not need the database to
    # boot (a respawn during an outage must not fail, which would make gunicorn halt). The
    # writer runs in a child of the worker (feedback/_process.py), forked here, before the
    # worker's threads start; the child closes the listening sockets it would inherit.
    state.feedback = _open_worker_writer(state.settings, [s.fileno() for s in worker.sockets])


def worker_exit(server, worker) -> None:
    _state(server).feedback.close()  # what the worker queued reaches the database


def child_exit(server, worker) -> None:
    _multiprocess.mark_process_dead(worker.pid)


# Keep-alive connections spread over the workers. A gthread worker keeps every connection it
# accepted, and a client (or nginx's upstream pool) opens its connections in a burst, so one
# worker can end up with most of them, or none, for as long as they live: one core idle, the
# other's queue long. After `keepalive_requests` requests on a connection the answer says
# "Connection: close"; the client reconnects, and the worker that accepts first is the one
# whose main thread is free, the least busy. (nginx does the same: keepalive_requests.)
_KEEPALIVE_REQUESTS = _settings.keepalive_requests


def pre_request(worker, req) -> None:
    if _KEEPALIVE_REQUESTS > 0 and req.req_number >= _KEEPALIVE_REQUESTS:
        req.must_close = True  # gunicorn answers "Connection: close" and closes after the answer



# Reload (`mm-cds reload`, or HUP to the master): with preload_app the workers fork from the
# master's app, so the master reloads the knowledge first, then gunicorn replaces the workers.
when_ready = _web.gunicorn_when_ready
on_reload = _web.gunicorn_on_reload

