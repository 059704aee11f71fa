"""The fetch path of workload (a) with every GET sent from one thread: what an event loop would buy (issue 12).

    .venv/bin/python bench/fetch_loop.py [--calls 15] [--delay 0.05]

The service sends a fetch-path call's GETs from a thread each (data/_assemble.py, data/_http.py).
This script sends the same GETs from one thread instead, on non-blocking keep-alive sockets
under one selector: the service's searches at once (data/_searches.py), each next page as its page answers, and the
Medication reads as soon as the search holding their references answers (those neither
contained nor in the answers, as the service's early reads). It then calls the service in
process with what arrived as the prefetch (the read Medications as `_include` entries), so
the call evaluates exactly what the service's own fetch path would. The two are alternated
against the same FHIR stub (bench/fhir_stub.py, its own process, `--delay` added to every
request), and it prints, per way, the median and p95 latency and the process's CPU per
call, with the timeline of the last one-thread call: when the searches and the reads were
answered and how long the evaluation took.

A measuring tool, not a transport: plain HTTP, Content-Length framing only (what the stub
and the tests' server send), no TLS, no byte budget, no retry beyond resending on an idle
connection the server closed.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from fhir_stub import running
from reference import machine, reference_now
from run import percentile
from workloads import NOW, chart, context

from cds_service import create_app, knowledge
from cds_service.data._fetch import bundle_resources, next_link
from cds_service.data._medications import MEDICATION_TYPES, Medications, local_key, reference_of
from cds_service.data._searches import plan
from cds_service.service import HookOutcome
from cds_service.service import call as call_hook

TOKEN = "test-token"  # the stub's (the tests' FHIR server's)
Answer = Callable[[str, dict], None]


class OneLoop:
    """GETs to one loopback origin from the calling thread: a keep-alive socket per GET in
    flight, one selector; `run` returns when every GET sent (also from `on_answer`) is answered."""

    def __init__(self, port: int, token: str = TOKEN):
        self.port, self.token = port, token
        self.idle: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        self.sent = 0

    def send(self, target: str, tag: str) -> None:
        sock = self.idle.pop() if self.idle else socket.create_connection(("127.0.0.1", self.port))
        sock.setblocking(False)
        request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAccept: application/fhir+json\r\n"
                   f"Authorization: Bearer {self.token}\r\n\r\n")
        try:
            sock.sendall(request.encode())
        except OSError:  # an idle connection the server closed
            sock.close()
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.setblocking(False)
            sock.sendall(request.encode())
        self.sent += 1
        self.selector.register(sock, selectors.EVENT_READ, (tag, bytearray(), target))

    def run(self, on_answer: Answer, deadline: float) -> None:
        while self.selector.get_map():
            events = self.selector.select(max(0.0, deadline - time.monotonic()))
            if not events:
                raise TimeoutError("the GETs were not answered before the deadline")
            for key, _ in events:
                self._read(key, on_answer)

    def _read(self, key: selectors.SelectorKey, on_answer: Answer) -> None:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        tag, data, target = key.data
        try:
            chunk = sock.recv(262144)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.selector.unregister(sock)
            sock.close()
            if data:
                raise ConnectionError("the server closed a connection mid-answer")
            self.sent -= 1
            self.send(target, tag)  # an idle connection the server closed before answering
            return
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(data[:end]).lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        if len(data) - end - 4 < length:
            return
        if not head.startswith(b"http/1.1 200"):
            raise ConnectionError(f"{tag}: {head.splitlines()[0].decode()}")
        self.selector.unregister(sock)
        self.idle.append(sock)
        on_answer(tag, orjson.loads(bytes(data[end + 4:end + 4 + length])))


class FetchLoopCall:
    """One fetch-path call of a service through OneLoop, then the service in process on what came."""

    def __init__(self, state: Any, service: Any, ctx: dict, base: str):
        self.state, self.service, self.ctx = state, service, ctx
        parts = urlsplit(base)
        self.base_path = parts.path.rstrip("/")
        self.loop = OneLoop(parts.port or 80)
        self.timeline: list[tuple[str, float]] = []

    def __call__(self) -> HookOutcome:
        started = time.perf_counter()
        self.timeline = []
        needed = [req for req in self.service.plan.requirements if not req.derived_from and req.template is not None]
        queries = {req.key: knowledge.resolve_template(req.template, self.ctx, NOW.date()) for req in needed}
        # the service's own searches: several keys' merged where one search answers them (data/_searches.py)
        searches = {f"search:{i}": search for i, search in enumerate(plan(
            queries, {req.key: req.merge_params for req in needed if req.merge_params is not None},
            self.state.fetch.merge_max_chars))}
        found: dict[str, list[dict]] = {tag: [] for tag in searches}
        reads: list[dict] = []
        asked: set[str] = set()
        known = set(Medications(bundle_resources(self.ctx.get("draftOrders") or {})).by_key)

        def on_answer(tag: str, body: dict) -> None:
            self.timeline.append((tag, time.perf_counter() - started))
            if tag.startswith("read:"):
                reads.append(body)
                return
            resources = bundle_resources(body) if body.get("resourceType") == "Bundle" else [body]
            found[tag].extend(resources)
            following = next_link(body) if body.get("resourceType") == "Bundle" else None
            if following:
                parts = urlsplit(following)
                self.loop.send(f"{parts.path}?{parts.query}", tag)
            known.update(Medications(resources).by_key)
            for ref in _references(resources) - asked:
                key = local_key(ref)
                if key and key not in known:
                    asked.add(ref)
                    self.loop.send(f"{self.base_path}/{key}", f"read:{key}")

        for tag, search in searches.items():
            self.loop.send(f"{self.base_path}/{quote(search.target, safe='/?=&,:')}", tag)
        self.loop.run(on_answer, time.monotonic() + 5.0)
        prefetch: dict[str, Any] = {key: _bundle(found[tag]) for tag, search in searches.items() for key in search.keys}
        first = next(iter(prefetch))
        prefetch[first]["entry"] += [{"resource": r, "search": {"mode": "include"}} for r in reads]
        body = {"hook": self.service.hook, "hookInstance": str(uuid.uuid4()), "context": self.ctx, "prefetch": prefetch}
        evaluating = time.perf_counter() - started
        outcome = call_hook(self.state.kb, self.service, body, NOW, self.state.fetch)
        self.timeline += [("evaluation", evaluating), ("end", time.perf_counter() - started)]
        return outcome


def _references(resources: list[dict]) -> set[str]:
    return {ref for r in resources if r.get("resourceType") in MEDICATION_TYPES and "medicationCodeableConcept" not in r
            and (ref := reference_of(r, "medicationReference")) and not ref.startswith("#")}


def _bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def threaded_body(ctx: dict, base: str) -> dict:
    """The same call for the service's own fetch path: nothing prefetched, fhirServer and its token."""
    return {"hook": "order-sign", "hookInstance": str(uuid.uuid4()), "context": ctx, "fhirServer": base,
            "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                  "scope": "user/*.read", "subject": "bench"}}


def compare(state: Any, base: str, calls: int) -> tuple[dict[str, dict[str, float]], list[tuple[str, float]]]:
    service = next(s for s in state.kb.services.values() if s.hook == "order-sign")
    ctx = context("a")
    one_loop = FetchLoopCall(state, service, ctx, base)
    ways: dict[str, Callable[[], HookOutcome]] = {
        "one thread": one_loop,
        "the service (a thread per GET)": lambda: call_hook(state.kb, service, threaded_body(ctx, base), NOW, state.fetch)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    cpu = dict.fromkeys(ways, 0.0)
    cards: dict[str, int] = {}
    for i in range(calls + 2):
        for name, way in ways.items():  # alternated: a slower moment of the machine falls on both
            started, cpu_started = time.perf_counter(), time.process_time()
            outcome = way()
            if i >= 2:
                times[name].append(time.perf_counter() - started)
                cpu[name] += time.process_time() - cpu_started
            cards[name] = len(outcome.response["cards"])
    rows = {name: {"median_ms": statistics.median(t) * 1000, "p95_ms": percentile(t, 95) * 1000,
                   "cpu_ms": cpu[name] / len(t) * 1000, "cards": cards[name]} for name, t in times.items()}
    return rows, one_loop.timeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    start = reference_now()
    print(f"machine: {machine(start)}")
    app = create_app({"log_level": "ERROR"}, clock=lambda: NOW)
    with running(chart("a", 300), args.delay) as base:
        rows, timeline = compare(app.extensions["mm_cds"], base, args.calls)
    print(f"\nworkload (a) 300, no prefetch, {args.delay * 1000:.0f} ms added to every request, {args.calls} calls each")
    print("| the GETs sent from | median ms | p95 ms | process CPU ms a call | cards |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} | {row['cpu_ms']:.1f} | {row['cards']} |")
    searches = [t for tag, t in timeline if tag not in ("evaluation", "end") and not tag.startswith("read:")]
    reads = [t for tag, t in timeline if tag.startswith("read:")]
    marks = dict(timeline)
    print(f"\nthe last one-thread call: searches answered at {min(searches) * 1000:.1f}-{max(searches) * 1000:.1f} ms, "
          f"{len(reads)} reads at {min(reads, default=0) * 1000:.1f}-{max(reads, default=0) * 1000:.1f} ms, "
          f"evaluation {marks['evaluation'] * 1000:.1f}-{marks['end'] * 1000:.1f} ms")
    print(f"reference task at the end: {reference_now():.2f} ms")


if __name__ == "__main__":
    main()
