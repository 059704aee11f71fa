"""Large hook calls one at a time per process: a worker's memory high-water mark.

A 10,000-resource chart (a 930 KB body) becomes some tens of MB of Python objects while it
is parsed and evaluated, and memory a process once held stays resident. Four such calls
at once on a worker's four threads left it 51 MB above its start; one at a time, 20 MB
(docs/operations.md, fourteenth session). Under the interpreter lock the threads of one
process never evaluate in parallel, so holding the others back loses no throughput: the
same CPU work runs one call after another instead of interleaved. Calls under the size,
the usual ones, never wait for a large one.

The body is read before the gate (a slow upload holds nobody back); parsing, evaluation
(with any fetches it makes) and the answer run inside it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class LargeCalls:
    def __init__(self, threshold: int):
        self.threshold = threshold  # bytes of body from which a call counts as large; 0: none does
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, size: int) -> Iterator[None]:
        """Runs the block at once for a small body, after the other large calls for a large one."""
        if not self.threshold or size < self.threshold:
            yield
            return
        with self._lock:
            yield
