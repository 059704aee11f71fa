"""Reload the knowledge without a restart: edited artifacts are served, broken ones refused.

The new KnowledgeBase is loaded and validated off the request path (a signal-started
thread, or the admin call's own thread), then swapped into the app State with one
reference assignment. A request reads `State.kb` once when it starts and keeps that
KnowledgeBase to the end, so requests in flight finish on the knowledge they began with
and none waits or fails. Knowledge that does not validate is refused: every problem is
logged and returned, and the previous knowledge keeps serving.

Triggers:
  SIGHUP                  sent to `mm-cds serve` (one process): reloads in a background thread
  POST /admin/reload      what `mm-cds reload` calls; answers with the outcome. Only from
                          loopback and never through a proxy (no X-Forwarded-For/Forwarded):
                          the operator on the host, not an EHR. A CDS client's JWT does not
                          grant it: security.admin_token does (a bearer token; without one,
                          only the loopback development server reloads). Requests are
                          coalesced (see coalesced()).
Why an HTTP call for the command rather than a pid file and a signal: a signal cannot carry
the refusal back, and `mm-cds reload` must print why an edit was refused.

Under gunicorn every worker holds its own knowledge, and with preload_app the workers are
forked from the master's app, so the master is what must reload. Two gunicorn hooks
(set them in the gunicorn configuration: `when_ready = reload.gunicorn_when_ready`,
`on_reload = reload.gunicorn_on_reload`) make `kill -HUP <master>` and `mm-cds reload` reach
every worker: on SIGHUP the master reloads (or refuses, logging why) before gunicorn forks
the new workers and retires the old ones gracefully; the admin call, answered by one
worker, validates the knowledge there (reporting a refusal) and, when it is sound,
signals the master.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds_service import knowledge
from cds_service.errors import ConfigurationError, KnowledgeError
from cds_service.ops import _metrics as metrics

log = logging.getLogger(__name__)
_lock = threading.Lock()  # one reload at a time; requests never take it
COALESCE_SECONDS = 5.0  # a reload asked for this soon after one, the knowledge unchanged, gets its outcome
ADMIN_TOKEN_MIN = 16

@dataclass
class ReloadResult:
    reloaded: bool
    message: str
    fingerprint: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    coalesced: bool = False  # the outcome of a reload another request started

    def as_dict(self) -> dict[str, Any]:
        return {"reloaded": self.reloaded, "message": self.message, "fingerprint": self.fingerprint,
                "problems": self.problems, "seconds": round(self.seconds, 3), "coalesced": self.coalesced}


def admin_token(settings: Any) -> str:
    """`admin_token` of the [security] table, else MM_CDS_ADMIN_TOKEN ("" when unset), checked: a string of at least
    ADMIN_TOKEN_MIN characters (ConfigurationError otherwise)."""
    token = settings.security.get("admin_token", "") or os.environ.get("MM_CDS_ADMIN_TOKEN", "")
    if not isinstance(token, str) or (token and len(token.strip()) < ADMIN_TOKEN_MIN):
        raise ConfigurationError(f"security.admin_token: must be a string of at least {ADMIN_TOKEN_MIN} characters")
    return token.strip()


def admin_token_matches(configured: str, presented: str | None) -> bool:
    """Constant-time comparison (a timing difference must not reveal a prefix)."""
    return bool(configured) and presented is not None and hmac.compare_digest(
        presented.encode("utf-8", "replace"), configured.encode("utf-8"))


def disk_signature(directories: Sequence[str]) -> str:
    """What the knowledge on disk is, cheaply (names, sizes, modification times)."""
    entries = []
    for directory in directories:
        for root, _, files in os.walk(directory):
            for name in files:
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                entries.append(f"{path}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def coalesced(key: str, directories: Sequence[str], run: Callable[[], ReloadResult],
              window: float = COALESCE_SECONDS) -> ReloadResult:
    """One reload at a time per instance (`key`: the gunicorn master's pid, or the process),
    across its worker processes (a file lock): a request arriving while a reload runs
    waits for it, and one arriving within `window` seconds after it, the knowledge on disk
    unchanged since that reload began, gets its outcome instead of a new 5-second reload.
    An edit made since then is always reloaded."""
    base = Path(tempfile.gettempdir()) / f"mm-cds-reload-{key}"
    with open(f"{base}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            signature = disk_signature(directories)
            try:
                last = json.loads(Path(f"{base}.json").read_text())
            except (OSError, ValueError):
                last = None
            if last and last.get("signature") == signature and 0 <= time.time() - last["finished"] < window:
                log.info("knowledge reload coalesced", extra={"event": "knowledge_reload_coalesced"})
                return dataclasses.replace(ReloadResult(**last["result"]), coalesced=True)
            result = run()
            Path(f"{base}.json").write_text(json.dumps({"signature": signature, "finished": time.time(),
                                                        "result": dataclasses.asdict(result)}))
            return result
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def reload_knowledge(current: Any) -> ReloadResult:
    """Load and validate the knowledge directories again; swap it in only if it is sound.
    `current` is the app State (settings and kb)."""
    with _lock:
        started = time.perf_counter()
        settings = current.settings
        try:
            kb = knowledge.load(settings.directories, settings.canonical_base, settings.prefetch_date_tokens)
        except KnowledgeError as exc:
            problems = [str(p) for p in exc.problems]
            # Artifact files and elements only: no request or patient data.
            log.error("knowledge reload refused", extra={"event": "knowledge_reload_refused",
                                                         "problems": problems[:50], "count": len(problems)})
            return ReloadResult(False, f"refused, the previous knowledge keeps serving: {exc}",
                                current.kb.fingerprint, problems, time.perf_counter() - started)
        previous = current.kb
        was = previous.fingerprint
        current.kb = kb  # one reference assignment: atomic; requests in flight keep their own
        metrics.set_knowledge(kb, previous)
        del previous
        knowledge.settle(kb)
        seconds = time.perf_counter() - started
        log.info("knowledge reloaded", extra={"event": "knowledge_reloaded", "was": was,
                                              "fingerprint": kb.fingerprint, "seconds": round(seconds, 3)})
        return ReloadResult(True, f"reloaded: {len(kb.files)} files, {len(kb.services)} services, "
                                  f"fingerprint {was} -> {kb.fingerprint}", kb.fingerprint, seconds=seconds)


def validate_only(current: Any) -> list[str]:
    """The problems of the knowledge on disk (empty: it loads), without swapping anything."""
    try:
        knowledge.load(current.settings.directories, current.settings.canonical_base,
                       current.settings.prefetch_date_tokens)
    except KnowledgeError as exc:
        return [str(p) for p in exc.problems]
    return []
