"""Remembering token ids (jti) until their token expires, so a captured token cannot be
sent twice.

The memory is per process. Behind a load balancer each replica remembers only the
tokens it saw, so a token replayed to another replica within its lifetime is not caught
there: run one replica, or pin each client to one (sticky sessions), or accept that
window. We chose not to keep jti in the feedback database: the check must answer
before the hook call proceeds, which would put a database round trip on every call's
critical path (the latency budget is a few milliseconds), and TLS plus a short token
lifetime (max_lifetime, exp - iat) already bound what a replay can do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ReplayGuard:
    def __init__(self, clock: Callable[[], float] = time.time, purge_every: int = 1024):
        self.clock = clock
        self.purge_every = purge_every
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._inserts = 0

    def first_use(self, iss: str, jti: str, expires: float) -> bool:
        """True the first time (iss, jti) is presented before `expires`; False on a replay."""
        now = self.clock()
        with self._lock:
            key = (iss, jti)
            if self._seen.get(key, 0) > now:
                return False
            self._seen[key] = expires
            self._inserts += 1
            if self._inserts % self.purge_every == 0:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            return True

    def __len__(self) -> int:
        return len(self._seen)
