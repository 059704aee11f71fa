"""bench/server_profile.py's context switches per request (bench/_writer_child.context_switches):
the measure behind "what requests in flight together cost one another in a process"
(docs/operations.md, eleventh session). A thread that sleeps on a lock and is woken is a
voluntary switch of its process; every live thread counts, not the main thread alone."""

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


def _ping_pong(rounds: int, linger: threading.Event | None = None) -> threading.Thread:
    """Two threads handing a turn back and forth (each hand-off puts one of them to sleep);
    the partner then stays alive until `linger` is set, if given."""
    ping, pong = threading.Event(), threading.Event()

    def partner() -> None:
        for _ in range(rounds):
            ping.wait()
            ping.clear()
            pong.set()
        if linger is not None:
            linger.wait()

    thread = threading.Thread(target=partner)
    thread.start()
    for _ in range(rounds):
        ping.set()
        pong.wait()
        pong.clear()
    return thread


def _own_switches(tid: int) -> int:
    for line in open(f"/proc/self/task/{tid}/status").read().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split(":")[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def test_every_live_thread_of_the_process_is_counted_not_the_calling_one_alone(writer_child) -> None:
    linger = threading.Event()
    before, _ = writer_child.context_switches(os.getpid())
    mine_before = _own_switches(threading.get_native_id())
    partner = _ping_pong(HANDOFFS, linger)
    try:
        after, involuntary = writer_child.context_switches(os.getpid())
        mine = _own_switches(threading.get_native_id()) - mine_before
    finally:
        linger.set()
        partner.join()
    assert mine >= HANDOFFS // 2  # this thread slept on most of the hand-offs
    assert after - before - mine >= HANDOFFS // 2  # and so did the partner, counted while alive
    assert involuntary >= 0


def test_another_process_is_read_and_a_gone_one_reads_as_nothing(writer_child) -> None:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked process
        os.close(read)
        _ping_pong(HANDOFFS).join()
        os.write(write, b"done")
        threading.Event().wait(30)
        os._exit(0)
    try:
        os.close(write)
        assert os.read(read, 4) == b"done"
        voluntary, _ = writer_child.context_switches(child)
        assert voluntary >= HANDOFFS // 2
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
