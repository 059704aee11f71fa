"""The production front: nginx (deploy/nginx/mm-cds.conf) in front of gunicorn, started by
deploy/nginx/run.py exactly as `make serve-proxy` starts it (issue 10, item 3).

Slow clients are held by nginx, never by gunicorn's threads; every error nginx answers
itself is a JSON OperationOutcome; gunicorn's HTML error pages never reach a client; the
service's own JSON errors pass unchanged. Each proof also runs the same traffic against
gunicorn directly (its internal port), where it fails: the tests fail without the proxy.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests

from .support import fuzzing
from .support.nginx import Proxy, require_nginx
from .support.ports import free_ports
from .support.requests_ import empty_prefetch, order_sign

pytestmark = [pytest.mark.slow, pytest.mark.nginx]


@pytest.fixture(autouse=True)
def _nginx_present():
    require_nginx()  # skipped without nginx on a developer's machine; a failure in CI

SIGN = "/cds-services/mm-tcell-order-sign"
SLOW_CONNECTIONS = 64
BOUND = 1.0  # seconds: the bound for /health and a hook call under attack


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    # 2 workers x 4 threads: 8 requests at once in gunicorn, so 64 slow clients are 8x that.
    server = Proxy(tmp_path_factory.mktemp("proxy"), workers="2", threads="4")
    server.wait_ready()
    yield server
    status = server.stop()
    assert status == 0, server.output()
    server.cleanup()


@pytest.fixture(scope="module")
def hook_body(proxy):
    services = {s["id"]: s for s in requests.get(proxy.base + "/cds-services", timeout=10).json()["services"]}
    return order_sign(prefetch=empty_prefetch(services["mm-tcell-order-sign"], {"resourceType": "Patient", "id": "p1"}))


# -- raw HTTP -----------------------------------------------------------------------------------

def exchange(port: int, data: bytes, head: bool = False, seconds: float = 12.0) -> bytes:
    """Send `data` on a new connection and read what comes back: until the server closes,
    or 0.3 s of silence after complete responses, or 3 s of silence before (the server is
    waiting for more). The sending side stays open: nginx takes a half-closed connection
    for a client that gave up and answers nothing."""
    buffer = b""
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server closed first (it refused what it had read): read what it said
            pass
        while time.monotonic() < deadline:
            sock.settimeout(0.3 if buffer and _complete(buffer, head) else 3.0)
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            buffer += chunk
    return buffer


def _complete(buffer: bytes, head: bool) -> bool:
    try:
        return all(status is not None for status, _, _ in responses(buffer, head, strict=True))
    except (ValueError, IndexError):
        return False


def responses(raw: bytes, head: bool = False, strict: bool = False) -> list[tuple[int | None, dict[str, str], bytes]]:
    """The HTTP/1.x responses in `raw`, in order: (status, headers in lower case, body). A
    reply that is not HTTP/1.x (HTTP/0.9: the body alone) is (None, {}, raw). `strict`:
    ValueError unless every response is complete (a body cut short, a head unfinished)."""
    found = []
    while raw:
        if not raw.startswith(b"HTTP/1."):
            found.append((None, {}, raw))
            break
        head_end = raw.find(b"\r\n\r\n")
        if head_end < 0:
            if strict:
                raise ValueError("unfinished head")
            found.append((None, {}, raw))
            break
        lines = raw[:head_end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        rest = raw[head_end + 4:]
        if head or status in (204, 304) or 100 <= status < 200:
            body, raw = b"", rest
        elif "content-length" in headers:
            size = int(headers["content-length"])
            if strict and len(rest) < size:
                raise ValueError("body cut short")
            body, raw = rest[:size], rest[size:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body, raw = _dechunk(rest)
        else:
            if strict:
                raise ValueError("a body that ends with the connection")
            body, raw = rest, b""
        found.append((status, headers, body))
    return found


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        line_end = data.find(b"\r\n")
        size = int(data[:line_end].split(b";")[0], 16)
        data = data[line_end + 2:]
        if size == 0:
            return body, data[data.find(b"\r\n") + 2:]
        body, data = body + data[:size], data[size + 2:]


def judge(status: int | None, headers: dict[str, str], body: bytes) -> str:
    """'json' (a JSON body with a JSON Content-Type; an OperationOutcome for an error),
    'empty' (no body), 'html', or 'other: ...'."""
    if not body:
        return "empty"
    if body.lstrip()[:1] == b"<" or "text/html" in headers.get("content-type", ""):
        return "html"
    try:
        parsed = json.loads(body)
    except ValueError:
        return f"other: {body[:60]!r}"
    if status is not None and not headers.get("content-type", "").startswith("application/json"):
        return f"other: Content-Type {headers.get('content-type')!r}"
    if status is not None and status >= 400 and not (
            isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome" and parsed.get("issue")):
        return f"other: {status} not an OperationOutcome"
    return "json"


# -- slow clients -------------------------------------------------------------------------------

@contextmanager
def slow_clients(port: int, variant: str, count: int = SLOW_CONNECTIONS):
    """`count` connections that each sent half a request and keep trickling more, one byte
    every 0.5 s (never enough to finish). 'headers': the request line and some headers,
    never the blank line; 'body': complete headers with Content-Length: 100000 and a few
    body bytes. Yields the sockets; all are closed after the block."""
    socks = []
    start = {
        "headers": f"POST {SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: ".encode(),
        "body": (f"POST {SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: 100000\r\n\r\n{\"hook\": \"").encode(),
    }[variant]
    stop = threading.Event()
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(start)
            socks.append(sock)

        def trickle():
            while not stop.wait(0.5):
                for sock in socks:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        time.sleep(0.5)  # every connection accepted and read by the server
        yield socks
    finally:
        stop.set()
        for sock in socks:
            sock.close()


def timed(method: str, url: str, **kwargs) -> tuple[int | str, float]:
    started = time.monotonic()
    try:
        status: int | str = requests.request(method, url, headers={"Connection": "close"}, **kwargs).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    return status, time.monotonic() - started


def still_open(socks) -> int:
    """How many of the slow connections the server has not closed (a peek that does not block)."""
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            alive += sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        finally:
            sock.setblocking(True)
    return alive


@pytest.mark.parametrize("variant", ["headers", "body"])
def test_64_slow_clients_do_not_delay_health_or_a_hook_call_through_nginx(proxy, hook_body, variant):
    with slow_clients(proxy.port, variant) as socks:
        health = [timed("GET", proxy.base + "/health", timeout=5) for _ in range(5)]
        calls = [timed("POST", proxy.base + SIGN, json=hook_body, timeout=5) for _ in range(5)]
        open_during = still_open(socks)
    print(f"\n{variant}: {open_during}/{SLOW_CONNECTIONS} slow connections held by nginx; "
          f"/health {[f'{s} {t * 1000:.0f} ms' for s, t in health]}; hook {[f'{s} {t * 1000:.0f} ms' for s, t in calls]}")
    assert open_during == SLOW_CONNECTIONS  # the attack was still on while we measured
    assert [s for s, _ in health] == [200] * 5
    assert [s for s, _ in calls] == [200] * 5
    assert max(t for _, t in health) < BOUND, health
    assert max(t for _, t in calls) < BOUND, calls


def test_the_same_slow_clients_freeze_gunicorn_without_nginx(proxy):
    """The control: gunicorn's threads wait for the rest of each request, so with the same
    64 connections on its own port, /health there never answers. After they close it
    recovers (and the module's other tests use it)."""
    with slow_clients(proxy.internal_port, "headers"):
        direct = [timed("GET", proxy.internal + "/health", timeout=2) for _ in range(3)]
    print(f"\ngunicorn direct under {SLOW_CONNECTIONS} slow connections: {direct}")
    assert [s for s, _ in direct] == ["ReadTimeout"] * 3
    deadline = time.monotonic() + 20
    while timed("GET", proxy.internal + "/health", timeout=2)[0] != 200:
        assert time.monotonic() < deadline, "gunicorn did not recover once the slow connections closed"


def test_slow_clients_are_dropped_after_the_client_timeouts(proxy):
    """A connection that never finishes its headers is closed by nginx (client_header_timeout
    10 s); it never reaches gunicorn, so nothing is logged there."""
    with slow_clients(proxy.port, "headers", count=4) as socks:
        for sock in socks:
            sock.settimeout(20)
        started = time.monotonic()
        # The trickle keeps sending, but the whole header is due within 10 s.
        answers = []
        for sock in socks:
            try:
                answers.append(sock.recv(100))
            except ConnectionResetError:  # reset_timedout_connection: an RST, not a FIN
                answers.append(b"")
        waited = time.monotonic() - started
    assert answers == [b""] * 4  # closed (408 is not sent for an unfinished header)
    assert 8 < waited < 15


# -- malformed requests -------------------------------------------------------------------------

def corpus() -> list[tuple[str, bytes, bool]]:
    """(kind, raw bytes, is HEAD): malformed and borderline requests, built systematically."""
    host = b"Host: 127.0.0.1\r\n"
    body = json.dumps(order_sign()).encode()
    items: list[tuple[str, bytes, bool]] = []

    def add(kind: str, raw: bytes, head: bool = False) -> None:
        items.append((kind, raw, head))

    # Request lines: methods, versions, targets.
    methods = [b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"PATCH", b"TRACE", b"CONNECT",
               b"PROPFIND", b"get", b"G", b"GE", b"GE T", b"GET\t", b"X" * 30, b"\xc3\x84GET", b"", b"-", b"M_SEARCH",
               b"A-B", b"1GET"]
    for method in methods:
        for version in (b"HTTP/1.1", b"HTTP/1.0"):
            add("method", method + b" /health " + version + b"\r\n" + host + b"\r\n", head=method == b"HEAD")
    versions = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/3", b"HTTP/1.2", b"HTTP/11", b"http/1.1",
                b"HTTP/1.1x", b"HTTP/", b"HTTPS/1.1", b"HTTP/1.01", b"HTTP/9.9", b"FOO"]
    targets = [b"/health", b"*", b"http://127.0.0.1/health", b"//health", b"/%", b"/%zz", b"/..%2f..%2fetc",
               b"/a b", b"/\x7f", b"/\xff\xfe", b"health", b"/cds-services?" + b"&" * 300, b"/health#frag"]
    for version in versions:
        for target in targets:
            add("request-line", b"GET " + target + b" " + version + b"\r\n" + host + b"\r\n")
    for length in (1000, 4000, 4080, 4085, 4090, 4094, 4100, 5000, 8000, 8190, 8200, 9000, 20000, 70000):
        add("long-uri", b"GET /cds-services?q=" + b"a" * (length - 20) + b" HTTP/1.1\r\n" + host + b"\r\n")
    # Headers: how many, how long, what they contain.
    for count in (50, 99, 100, 101, 150, 500, 1000, 3000):
        add("header-count", b"GET /health HTTP/1.1\r\n" + host + b"".join(b"X%d: y\r\n" % i for i in range(count)) + b"\r\n")
    for size in (1000, 4000, 4080, 4090, 4100, 8000, 8190, 8200, 16000, 70000):
        add("header-size", b"GET /health HTTP/1.1\r\n" + host + b"X-Big: " + b"b" * size + b"\r\n\r\n")
    for count, size in ((3, 6000), (5, 3500), (10, 3000), (20, 1000), (40, 500)):
        add("header-total", b"GET /health HTTP/1.1\r\n" + host + b"".join(b"X%d: " % i + b"t" * size + b"\r\n" for i in range(count)) + b"\r\n")
    bad_headers = [b"NoColon", b": no-name", b"Bad Name: x", b"Bad\x00: x", b"X: a\x00b", b"X: a\x01b", b"X: \x7f",
                   b"X: \xff\xfe", b"X: a\rb", b" folded", b"\tfolded: x", b"X-Under_score: y", b"Host: second",
                   b"Host:", b"Host: bad host", b"Host: [::1", b"Host: a/b", b"Content-Length: abc", b"Content-Length: -1",
                   b"Content-Length: 1e3", b"Content-Length: 10, 11", b"Content-Length: 5\r\nContent-Length: 6",
                   b"Content-Length: 99999999999999999999", b"Content-Length: +5", b"Transfer-Encoding: gzip",
                   b"Transfer-Encoding: chunked, gzip", b"Transfer-Encoding: identity", b"Transfer-Encoding: xchunked",
                   b"Transfer-Encoding: chunked\r\nContent-Length: 5", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                   b"Expect: 100-continue", b"Expect: something", b"X-Forwarded-Ssl: on", b"X-Forwarded-Protocol: ssl",
                   b"X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off", b"X-Forwarded-Proto: gopher", b"Forwarded: for=1.2.3.4",
                   b"X-Forwarded-For: 1.2.3.4, <script>", b"Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__",
                   b"Upgrade: websocket\r\nConnection: Upgrade", b"Content-Type: application/json; charset=utf-9",
                   b"Authorization: Bearer garbage", b"Authorization: Basic Zm9vOmJhcg==", b"Authorization: Bearer " + b"A" * 3000,
                   b"Authorization: \x00", b"Cookie: " + b"c=1; " * 500, b"Accept: */*\r\n\r\n", b"X-CDS-Explain: 1",
                   b"Proxy-Connection: keep-alive", b"TE: trailers", b"Range: bytes=0-1", b"Range: bytes=9999-",
                   b"If-None-Match: *", b"Content-Encoding: gzip", b"Trailer: X",
                   # control characters in the headers nginx forwards (gunicorn refuses them)
                   b"Authorization: Bearer a\x01b", b"User-Agent: \x7f", b"Content-Type: application/json\x1b",
                   b"Origin: http://a\x08b", b"X-CDS-Explain: 1\x0b", b"Accept: \x1f", b"If-None-Match: \"a\x02\"",
                   b"Access-Control-Request-Headers: a\x0cb", b"Accept-Language: \x7fen",
                   # repeated headers (gunicorn refuses a repeated Content-Type)
                   b"Content-Type: text/plain", b"Authorization: Bearer a\r\nAuthorization: Bearer b",
                   b"User-Agent: a\r\nUser-Agent: b", b"X-CDS-Explain: 1\r\nX-CDS-Explain: 0"]
    for header in bad_headers:
        add("header", b"GET /health HTTP/1.1\r\n" + host + header + b"\r\n\r\n")
        add("header", b"POST " + SIGN.encode() + b" HTTP/1.1\r\n" + host + header + b"\r\n"
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    add("header", b"GET /health HTTP/1.1\r\n\r\n")  # HTTP/1.1 without Host
    add("header", b"GET /health HTTP/1.0\r\n\r\n")
    # Bodies: Content-Length, chunked framing, size, content.
    post = b"POST " + SIGN.encode() + b" HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
    for declared, sent in ((len(body) + 10, body), (len(body) - 10, body), (0, body), (len(body), body + b"GET /x HTTP/1.1\r\n\r\n"),
                           (5242881, body), (5242880, body), (10 ** 12, body)):
        add("content-length", post + b"Content-Length: %d\r\n\r\n" % declared + sent)
    chunked = post + b"Transfer-Encoding: chunked\r\n\r\n"
    half = len(body) // 2
    for framing in (b"zz\r\n" + body + b"\r\n0\r\n\r\n", b"%x\r\n" % len(body) + body[:-5] + b"\r\n0\r\n\r\n",
                    b"%x\r\n" % len(body) + body + b"0\r\n\r\n", b"%x;ext=1\r\n" % len(body) + body + b"\r\n0\r\n\r\n",
                    b"-1\r\n" + body + b"\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\n" + body,
                    b"0x%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n", b"%x\r\n" % len(body) + body + b"\r\n",
                    b"%x\r\n" % len(body) + body + b"\r\n0\r\nX-Trailer: 1\r\n\r\n",
                    b"%x\n" % len(body) + body + b"\n0\n\n", b"%x \r\n" % len(body) + body + b"\r\n0\r\n\r\n",
                    b"%x\r\n" % half + body[:half] + b"\r\n%x\r\n" % (len(body) - half) + body[half:] + b"\r\n0\r\n\r\n",
                    b"", b"0\r\n\r\n", b"\r\n\r\n", b"%x\r\n" % (6 * 1024 * 1024) + b" " * (6 * 1024 * 1024) + b"\r\n0\r\n\r\n"):
        add("chunked", chunked + framing)
    for content in (b"{not json", b"", b"[]", b"null", b"\xff\xfe\x00", b"{\"hook\": 1}", b"[" * 10000 + b"]" * 10000,
                    b"{\"hook\": \"order-sign\", \"hookInstance\": \"" + b"\xc3\x28" + b"\"}"):
        add("body", post + b"Content-Length: %d\r\n\r\n" % len(content) + content)
    # Not HTTP/1.x at all.
    add("http/0.9", b"GET /health\r\n")
    add("http/0.9", b"GET /cds-services\r\n")
    add("http/0.9", b"POST /health\r\n")
    add("http/0.9", b"GET /nope\r\n")
    for raw in (b"", b"\r\n", b"\r\n\r\n", b"GET", b"GET /health", b"GET /health HTTP/1.1", b"\x00" * 100,
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
                b"GET /health HTTP/1.1\n" + b"Host: x\n\n", b"GET /health HTTP/1.1\r\nHost: x\n\r\n",
                b"GET /health HTTP/1.1\r\n" + host + b"\r\n" + b"\x00garbage\r\n\r\n",
                b"GET /health HTTP/1.1\r\n" + host + b"\r\nGET /health HTTP/1.1\r\n" + host + b"\r\n"):
        add("garbage", raw)
    rng = random.Random(10)  # deterministic
    for length in (1, 8, 64, 512, 4096):
        for _ in range(4):
            add("random-bytes", bytes(rng.randrange(256) for _ in range(length)))
            add("random-after-line", b"GET /health HTTP/1.1\r\n" + bytes(rng.randrange(256) for _ in range(length)) + b"\r\n\r\n")
    return items


def run_corpus(port: int, label: str, workers: int) -> tuple[dict[str, int], list[str]]:
    """Send the whole corpus to `port`; a tally of answers and the descriptions of bad ones."""
    items = corpus()
    with ThreadPoolExecutor(workers) as pool:
        raws = list(pool.map(lambda item: exchange(port, item[1], item[2]), items))
    tally: dict[str, int] = {"requests": len(items)}
    bad = []
    for (kind, raw_request, head), raw in zip(items, raws, strict=False):
        answers = responses(raw, head) if raw else []
        if not answers:
            tally["no answer"] = tally.get("no answer", 0) + 1
            fuzzing.TALLY[(label, kind, "closed")] += 1
        for status, headers, body in answers:
            verdict = judge(status, headers, body)
            tally[verdict.split(":")[0]] = tally.get(verdict.split(":")[0], 0) + 1
            fuzzing.TALLY[(label, kind, str(status or "HTTP/0.9"))] += 1
            if verdict != "json" and verdict != "empty":
                bad.append(f"{kind} {raw_request[:80]!r} -> {status} {verdict}: {body[:100]!r}")
    return tally, bad


def test_every_error_body_through_nginx_is_json_and_gunicorn_alone_sends_html(proxy):
    direct, direct_bad = run_corpus(proxy.internal_port, "raw corpus answers, gunicorn direct", workers=6)
    through, through_bad = run_corpus(proxy.port, "raw corpus answers, through nginx", workers=16)
    print(f"\nmalformed corpus: gunicorn direct {direct}; through nginx {through}")
    assert direct["requests"] >= 300
    assert direct.get("html", 0) > 0, direct  # the corpus does reach gunicorn's HTML pages
    assert through_bad == [], "\n".join(through_bad)
    assert through.get("json", 0) >= direct["requests"] // 2  # most requests got a (JSON) answer


# -- the proxy's own errors, the service's errors ------------------------------------------------

def test_a_502_when_gunicorn_is_down_is_json(tmp_path):
    (dead,) = free_ports(1)  # nothing listens there
    front = Proxy(tmp_path, upstream=f"127.0.0.1:{dead}")
    try:
        front.wait_ready("/health", status=502)
        for method, path in (("GET", "/health"), ("POST", SIGN), ("GET", "/cds-services")):
            answer = requests.request(method, front.base + path, json={} if method == "POST" else None, timeout=10)
            assert answer.status_code == 502
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.json() == {"resourceType": "OperationOutcome", "issue": [{
                "severity": "error", "code": "transient", "diagnostics": "the CDS service is not reachable; try again"}]}
            assert "nginx/" not in answer.headers.get("Server", "")  # server_tokens off
    finally:
        assert front.stop() == 0, front.output()


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"hook": "order-sign"}'])
def test_the_services_own_json_400_passes_through_unchanged(proxy, content):
    headers = {"Content-Type": "application/json"}
    direct = requests.post(proxy.internal + SIGN, data=content, headers=headers, timeout=10)
    through = requests.post(proxy.base + SIGN, data=content, headers=headers, timeout=10)
    assert direct.status_code == 400 and direct.json()["resourceType"] == "OperationOutcome"
    assert (through.status_code, through.headers["Content-Type"], through.content) == (
        direct.status_code, direct.headers["Content-Type"], direct.content)


def test_a_body_over_the_limit_is_refused_by_nginx_with_json(proxy):
    answer = requests.post(proxy.base + SIGN, data=b" " * (5 * 1024 * 1024 + 1),
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413
    assert answer.json()["issue"][0] == {"severity": "error", "code": "too-costly",
                                         "diagnostics": "request body larger than 5242880 bytes"}


def test_gunicorn_listens_on_loopback_only(proxy):
    """/proc/net/tcp: the internal port is bound to 127.0.0.1 alone, never 0.0.0.0."""
    bound = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if int(port, 16) == proxy.internal_port and state == "0A":  # LISTEN
                bound.add(address)
    assert bound == {"0100007F"}


def test_the_forwarded_headers_still_do_their_jobs(proxy):
    """The header list in mm-cds.conf: a CORS preflight answers as it does without nginx,
    and the forwarding headers are nginx's (a client's X-Forwarded-For is replaced)."""
    preflight = {"Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    direct = requests.options(proxy.internal + SIGN, headers=preflight, timeout=10)
    through = requests.options(proxy.base + SIGN, headers=preflight, timeout=10)
    allow = lambda r: {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("access-control-")}  # noqa: E731
    assert direct.status_code == through.status_code == 200
    assert allow(through) == allow(direct) and allow(through)["access-control-allow-origin"] in ("*", preflight["Origin"])
    # /admin/reload refuses forwarded requests: nginx always sends X-Forwarded-For, so a
    # reload through the proxy is refused even if the client sent no such header.
    reload = requests.post(proxy.base + "/admin/reload", timeout=30)
    assert reload.status_code in (401, 403) and reload.json()["resourceType"] == "OperationOutcome"
