"""bench/server_profile.py's context switches per request (bench/_writer_child.context_switches):
the measure behind "what requests in flight together cost one another in a process"
(docs/operations.md, eleventh session). A thread that sleeps on a lock and is woken is a
voluntary switch of its process (preempted under load instead, an involuntary one); every
live thread counts, not the main thread alone."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from tests.support.bench import bench_module

HANDOFFS = 200


@pytest.fixture(scope="module")
def writer_child():
    with bench_module("_writer_child") as module:
        yield module


def _ping_pong(rounds: int, linger: threading.Event | None = None) -> tuple[threading.Thread, list[tuple[int, int]]]:
    """Two threads handing a turn back and forth (each hand-off stops one of them: it sleeps,
    or under load is preempted); the partner then records its own switches and stays alive
    until `linger` is set, if given."""
    ping, pong = threading.Event(), threading.Event()
    partners: list[tuple[int, int]] = []

    def partner() -> None:
        for _ in range(rounds):
            ping.wait()
            ping.clear()
            pong.set()
        partners.append(_this_thread())
        if linger is not None:
            linger.wait()

    thread = threading.Thread(target=partner)
    thread.start()
    for _ in range(rounds):
        ping.set()
        pong.wait()
        pong.clear()
    while thread.is_alive() and not partners:
        threading.Event().wait(0.001)
    return thread, partners


def _this_thread() -> tuple[int, int]:
    """The calling thread's own voluntary and involuntary switches, read where the kernel
    keeps them for the thread itself rather than through its process's task list."""
    found = dict(line.split(":") for line in open("/proc/thread-self/status").read().splitlines() if ":" in line)
    return int(found["voluntary_ctxt_switches"]), int(found["nonvoluntary_ctxt_switches"])


def _at_least(read: tuple[int, int], *threads: tuple[int, int]) -> None:
    # Counts only grow, so the process's reading, taken last, holds at least what each
    # of its threads read of itself before; a thread left out would fall short by its share.
    for kind in (0, 1):
        assert read[kind] >= sum(thread[kind] for thread in threads)
    assert sum(map(sum, threads)) >= 1


def test_every_live_thread_of_the_process_is_counted_not_the_calling_one_alone(writer_child) -> None:
    linger = threading.Event()
    partner, partners = _ping_pong(HANDOFFS, linger)
    try:
        mine = _this_thread()
        read = writer_child.context_switches(os.getpid())
    finally:
        linger.set()
        partner.join()
    assert sum(partners[0]) >= 1  # the partner was stopped by the hand-offs: its share is real
    _at_least(read, mine, partners[0])


def test_another_process_is_read_and_a_gone_one_reads_as_nothing(writer_child) -> None:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked process
        os.close(read)
        _ping_pong(HANDOFFS)[0].join()
        os.write(write, json.dumps(_this_thread()).encode())
        threading.Event().wait(30)
        os._exit(0)
    try:
        os.close(write)
        own = tuple(json.loads(os.read(read, 64)))
        _at_least(writer_child.context_switches(child), own)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert writer_child.context_switches(child) == (0, 0)


def test_server_profile_reads_the_processes_the_workers_named(tmp_path) -> None:
    (tmp_path / "pids-11.json").write_text(json.dumps({"worker": 11, "writer": 12}))
    (tmp_path / "pids-13.json").write_text(json.dumps({"worker": 13, "writer": None}))  # the writer fell back to a thread
    with bench_module("server_profile") as profile:
        found = profile._processes(str(tmp_path))
    assert sorted(found["workers"]) == [11, 13]
    assert found["feedback writer processes"] == [12]
