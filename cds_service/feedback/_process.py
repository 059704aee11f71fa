"""The feedback writer in a process of its own, one beside each gunicorn worker.

In a worker, the writer's commits (the card rows' index work: 0.4 ms of CPU a request, in
commits of 3.3 ms) contend with the request threads for the worker's one interpreter lock:
bench/tail.py found 17% of the requests that overlapped their worker's commit slow, 1% with
the commits a no-op. So the worker forks, before its threads start, a child that owns the
`Writer` (the same class: its thread, queue, batches, retries and retention) and hands it
rows over a socket pair (SOCK_SEQPACKET: every send one whole message, in order):

    worker (ProcessWriter)                     writer child (serve)
    record_cards(rows)        ("cards", rows)  -> Writer.record_cards        no answer
    store_feedback(rows)      ("feedback", id, rows, timeout, fail_fast)
                                               -> Writer.store_feedback, in a thread
                              <- (id, new, error)
    close()                   ("close",)       -> Writer.close(): the queue written, exit
    the worker dies           end of file      -> the same

Why one child per worker, not one per host: its life is its worker's, so gunicorn's master
supervises nothing new, and the end of file arrives however the worker ends, SIGKILL
included: the child writes what it holds, where the thread died with its worker. If the
child dies, the worker writes in a thread of its own from then on (logged once).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import pickle
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NoReturn

from cds_service.config import Settings
from cds_service.errors import StoreRejected, StoreUnavailable
from cds_service.feedback._db import CardRow, Database, FeedbackRow, open_database
from cds_service.feedback._writer import Flushing, Writer, open_writer

log = logging.getLogger(__name__)
# One message at most: a call's card rows are about 1 KB each, and the default socket buffer
# (about 200 KB) takes a few messages of this size. Bigger row lists are split.
MAX_MESSAGE = 64 * 1024
SEND_WAIT = 0.1  # a full socket (the child behind by a buffer's worth): card rows dropped after this
CLOSE_MARGIN = 2.0  # the child's own close is bounded by the worker's timeout; then it is killed
_ERRORS = {"StoreUnavailable": StoreUnavailable, "StoreRejected": StoreRejected}
# What a gunicorn worker inherits from the master: the child ignores them all, and ends
# when its worker does (the socket's end of file), so its queue is written first.
_SIGNALS = ("SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGTTIN", "SIGTTOU")


@dataclass
class _Reply:
    done: threading.Event = field(default_factory=threading.Event)
    new: int = 0
    error: Exception | None = None


class ProcessWriter(Flushing):
    """Writer's interface for the worker (record_cards, store_feedback, flush, close, db),
    its work done in the child. Made in the worker before its threads start (post_fork).

    A row too big for one message (a feedback comment of over 64 KB) is written by a
    Writer thread in the worker, as is everything once the child is gone."""

    def __init__(self, settings: Settings, close_in_child: Iterable[int] = ()):
        self.db: Database = open_database(settings.database_url, settings.data_dir)
        self._settings = settings
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            ours.close()
            serve(theirs, self.db, settings, close_in_child)
        theirs.close()
        self.pid = pid
        self._sock = ours
        self._sock.settimeout(SEND_WAIT)
        self._replies_sock = ours.dup()  # blocking, for the reader; the timeout is the senders'
        self._replies_sock.settimeout(None)
        self._pending: dict[int, _Reply] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._here: Writer | None = None
        self._gone = False  # the child exited: everything is written here
        self._closed = False
        self._reaped = False
        self._reader = threading.Thread(target=self._read_replies, name="feedback-writer-replies", daemon=True)
        self._reader.start()

    def record_cards(self, rows: Sequence[CardRow]) -> None:
        if not rows:
            return
        if self._gone:
            self._writer_here().record_cards(rows)
            return
        for chunk, data in _packets(lambda part: ("cards", part), tuple(rows)):
            sent = self._send(data)
            if sent is _FULL:
                log.error("feedback writer process behind: issued-card records dropped",
                          extra={"event": "cards_dropped", "count": len(chunk)})
            elif sent is not _SENT:  # gone, or one row too big for a message
                self._writer_here().record_cards(chunk)

    def store_feedback(self, rows: Sequence[FeedbackRow], timeout: float, fail_fast: bool = True) -> int:
        """Waits until the rows are committed (by the child); returns how many were new."""
        if self._gone:
            return self._writer_here().store_feedback(rows, timeout, fail_fast)
        deadline = time.monotonic() + timeout
        chunks = [chunk for chunk, _ in _packets(lambda part: ("feedback", 0, 0.0, fail_fast, part), tuple(rows))]
        return sum(self._ask(chunk, fail_fast, deadline) for chunk in chunks)

    def close(self, timeout: float = 10.0) -> None:
        """The child writes what it holds (for up to `timeout` seconds) and exits."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.send(pickle.dumps(("close", timeout)))
        except OSError:
            pass  # gone already, or stuck with a full socket: waited for below, then killed
        self._reap(timeout + CLOSE_MARGIN)
        if self._here is not None:
            self._here.close(timeout)
        self._sock.close()
        self._replies_sock.close()

    def _ask(self, rows: tuple, fail_fast: bool, deadline: float) -> int:
        reply_id = next(self._ids)
        reply = self._pending[reply_id] = _Reply()
        try:
            sent = self._send(pickle.dumps(("feedback", reply_id, max(deadline - time.monotonic(), 0.0),
                                            fail_fast, rows), protocol=pickle.HIGHEST_PROTOCOL))
            if sent is _FULL:
                raise StoreUnavailable("the feedback writer process is behind")
            if sent is not _SENT:  # the child's queue first, so its cards are in before these rows
                if not self._gone and not self.flush(max(deadline - time.monotonic(), 0.0)):
                    raise StoreUnavailable("the feedback writer process did not commit in time")
                return self._writer_here().store_feedback(rows, max(deadline - time.monotonic(), 0.0), fail_fast)
            if not reply.done.wait(max(deadline - time.monotonic(), 0.0) + 0.05):
                raise StoreUnavailable("the feedback writer process did not answer in time")
        finally:
            self._pending.pop(reply_id, None)
        if reply.error is not None:
            raise reply.error
        return reply.new

    def _send(self, data: bytes) -> object:
        """_SENT; _FULL: the socket stayed full for SEND_WAIT; _GONE: the child exited (or
        exits); _TOO_BIG: over MAX_MESSAGE (one row that big)."""
        if len(data) > MAX_MESSAGE:
            return _TOO_BIG
        try:
            self._sock.send(data)
            return _SENT
        except TimeoutError:
            return _FULL
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED, errno.ENOTCONN):
                raise
            self._child_gone()
            return _GONE

    def _read_replies(self) -> None:
        buffer = bytearray(MAX_MESSAGE)
        while True:
            data = _receive_one(self._replies_sock, buffer)
            if data is None:
                break
            reply_id, new, error = pickle.loads(data)
            reply = self._pending.get(reply_id)
            if reply is not None:
                reply.new = new
                reply.error = None if error is None else _ERRORS.get(error[0], StoreUnavailable)(error[1])
                reply.done.set()
        if not self._closed:  # the child died: nothing more will answer
            self._child_gone()
        for reply in list(self._pending.values()):
            reply.error = StoreUnavailable("the feedback writer process exited")
            reply.done.set()

    def _child_gone(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
        log.error("feedback writer process exited: this worker writes in its own thread from now on",
                  extra={"event": "feedback_writer_process_exited", "pid": self.pid})
        self._writer_here()
        self._reap(1.0, kill=False)  # its socket closes a moment before it can be reaped

    def _writer_here(self) -> Writer:
        with self._lock:
            if self._here is None:
                settings = self._settings
                self._here = Writer(self.db, settings.feedback_queue_size, settings.issued_card_days).start(False)
            return self._here

    def _reap(self, seconds: float, kill: bool = True) -> None:
        deadline = time.monotonic() + seconds
        while not self._reaped:  # once reaped, the pid may be another process's
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                done = self.pid  # reaped by someone else
            if done:
                self._reaped = True
                return
            if time.monotonic() >= deadline:
                if kill:
                    log.error("feedback writer process did not exit; killed",
                              extra={"event": "feedback_writer_killed", "pid": self.pid})
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    self._reaped = True
                return
            time.sleep(0.01)


_SENT, _FULL, _GONE, _TOO_BIG = object(), object(), object(), object()


def open_worker_writer(settings: Settings, close_in_child: Iterable[int] = ()) -> ProcessWriter | Writer:
    """A gunicorn worker's writer: in a child process, or (the fork refused: a process
    limit) a thread of the worker, as before. Neither needs the database to start."""
    try:
        return ProcessWriter(settings, close_in_child)
    except OSError as exc:
        log.error("feedback writer process not started: writing in the worker's own thread",
                  extra={"event": "feedback_writer_process_refused", "error": type(exc).__name__})
        return open_writer(settings, migrate=False)


def _packets(message: Callable[[tuple], tuple], rows: tuple) -> list[tuple[tuple, bytes]]:
    """(rows, pickled message) pieces in order, each within MAX_MESSAGE unless one row is
    bigger (a call's cards: one piece, pickled once)."""
    data = pickle.dumps(message(rows), protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) <= MAX_MESSAGE or len(rows) <= 1:
        return [(rows, data)]
    half = len(rows) // 2
    return _packets(message, rows[:half]) + _packets(message, rows[half:])


def _receive_one(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """One whole message, or None at end of file (the other side closed or died)."""
    while True:
        try:
            size = sock.recv_into(buffer)
        except InterruptedError:
            continue
        except OSError:
            return None
        return bytes(buffer[:size]) if size else None


def serve(sock: socket.socket, db: Database, settings: Settings, close: Iterable[int]) -> NoReturn:
    """The child's life: a Writer fed from the socket until close or end of file."""
    status = 1
    try:
        for fd in close:  # gunicorn's listening sockets: a draining child must not hold the port
            os.close(fd)
        for name in _SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        _name_process("mm-cds-writer")
        writer = Writer(db, settings.feedback_queue_size, settings.issued_card_days).start(migrate=False)
        timeout = _receive(sock, writer)
        writer.close(timeout)
        status = 0
    except BaseException:  # the child must never return into the worker's code
        log.exception("feedback writer process failed", extra={"event": "feedback_writer_process_failed"})
    finally:
        logging.shutdown()
        os._exit(status)


def _receive(sock: socket.socket, writer: Writer) -> float:
    """Hands each message to the writer; returns the close timeout (10 s at end of file)."""
    answering = ThreadPoolExecutor(max_workers=4, thread_name_prefix="feedback-answer")
    buffer = bytearray(MAX_MESSAGE)
    while True:
        data = _receive_one(sock, buffer)
        if data is None:
            return 10.0
        message = pickle.loads(data)
        if message[0] == "cards":
            writer.record_cards(message[1])
        elif message[0] == "feedback":
            # in order: the cards received before it are queued before its rows
            answering.submit(_answer, sock, writer, *message[1:])
        else:
            return float(message[1])


def _answer(sock: socket.socket, writer: Writer, reply_id: int, timeout: float, fail_fast: bool,
            rows: Sequence[FeedbackRow]) -> None:
    new, error = 0, None
    try:
        new = writer.store_feedback(rows, timeout, fail_fast)
    except (StoreUnavailable, StoreRejected) as exc:
        error = (type(exc).__name__, str(exc))
    try:
        sock.send(pickle.dumps((reply_id, new, error)))
    except OSError:
        pass  # the worker is gone; its rows are written all the same


def _name_process(name: str) -> None:
    """What ps and top show (Linux): the child is not a second gunicorn worker."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass
