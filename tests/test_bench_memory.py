"""bench/memory.py, behind the pod sizing in docs/operations.md ("Memory of a pod") and
tests/test_kubernetes.py: a page a forked worker still shares with its parent counts once
in the proportional set size of the two, twice in their resident sizes."""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.bench import bench_module

SHARED_MB = 64


@pytest.fixture(scope="module")
def memory():
    with bench_module("memory") as module:
        yield module


def test_a_page_shared_after_fork_counts_once_in_pss_and_twice_in_rss(memory) -> None:
    block = bytearray(os.urandom(1024)) * (SHARED_MB * 1024)  # touched: resident in the parent
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the forked "worker": maps the same pages, writes none of them
        os.close(read)
        if os.fork() == 0:  # and its own child, as a worker's feedback writer
            signal.pause()
            os._exit(0)
        os.write(write, b"ready")
        signal.pause()
        os._exit(0)
    try:
        os.close(write)
        assert os.read(read, 5) == b"ready"
        [grandchild] = memory.children(child)
        rss = memory.rss_mb(os.getpid()) + memory.rss_mb(child)
        # The paused grandchild's PSS only grows meanwhile: each page this process (the test's,
        # heap in use) writes stops being shared with it. So the reading lies between the two.
        before = memory.pss_mb(grandchild)
        pss = memory.server_pss(os.getpid(), [str(child)])
        after = memory.pss_mb(grandchild)
        assert pss["workers"] == 1 and pss["writers"] == 1
        assert before - 0.01 <= pss["writers_total"] <= after + 0.01, (before, pss["writers_total"], after)
        assert pss["total"] == pytest.approx(pss["master"] + pss["workers_total"] + pss["writers_total"])
        # each process's RSS holds the whole block; their PSS hold it once between them
        assert memory.rss_mb(child) > SHARED_MB
        assert rss - pss["total"] > 0.8 * SHARED_MB
        assert pss["total"] < memory.rss_mb(os.getpid()) + 0.5 * SHARED_MB
        assert memory.pss_line(pss).endswith(f"= {pss['total']:.0f} MB")
    finally:
        for pid in memory.children(child):
            os.kill(int(pid), signal.SIGKILL)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read)
        del block
