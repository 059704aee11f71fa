"""For the instrumented bench servers (bench/_tail_conf.py, bench/_server_profile_conf.py):
their accounting from the feedback writer's child process too (cds_service/feedback/_process.py),
which a worker forks in the production post_fork hook. Bench only: it wraps private methods."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from typing import Any


def cpu_of_this_process() -> float:
    """User and system CPU seconds of every thread of this process, from /proc."""
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every live thread of a process, from
    /proc (a thread that waits for the interpreter lock, a socket or a lock sleeps: voluntary);
    (0, 0) for a process that is gone."""
    voluntary = involuntary = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            lines = open(status).read().splitlines()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        for line in lines:
            name, _, value = line.partition(":")
            if name == "voluntary_ctxt_switches":
                voluntary += int(value)
            elif name == "nonvoluntary_ctxt_switches":
                involuntary += int(value)
    return voluntary, involuntary


def at_writer_child_close(dump: Callable[[int], None]) -> None:
    """`dump(worker pid)` in the worker's writer child, once its Writer has written what it
    held, before the child exits. Call in post_fork before the production hook forks it."""
    import cds_service.feedback._writer as writer

    worker = os.getpid()
    close = writer.Writer.close

    def closing(self: Any, *args: Any, **kwargs: Any) -> None:
        close(self, *args, **kwargs)
        if os.getpid() != worker:
            dump(worker)

    writer.Writer.close = closing  # type: ignore[method-assign]
