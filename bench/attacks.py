"""The attack matrix of issue 10 against the production server, alongside legitimate traffic.

    .venv/bin/python bench/attacks.py [--n 20] [--workers 2] [--only ssrf,jku]

Starts `mm-cds serve --prod` (gunicorn) on a free loopback port with a settings file made
here (a trusted issuer with keys made here; JWT required; a loopback FHIR server, a slow
FHIR server and a key server of its own), then for each attack runs the attack requests
while four threads send legitimate signed hook calls (fetching from the good FHIR
server) and /health probes. It prints, per attack: requests sent, what the attack
achieved, and what legitimate traffic saw (calls, errors, p95 ms). A benchmark, not a
test: nothing is asserted. The code measured is the checkout the script is run from
(PYTHONPATH is set to it), so the same script gives "before" (run from a worktree at
main) and "after". Settings this checkout does not know (fhir_servers, explain) are left
out for an older tree. `--proxy` is not implemented here: the "explain via proxy" attack
sends what a local reverse proxy adds (X-Forwarded-For, X-Real-IP) from loopback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Response  # noqa: E402

from tests.support.fhir_server import FhirServer, FhirStore  # noqa: E402
from tests.support.requests_ import order_sign  # noqa: E402
from tests.support.tokens import KeyPair, claims, handmade  # noqa: E402

ISS = "https://ehr.bench.example"
JKU_ISS = "https://jku.bench.example"
SIGN = "/cds-services/mm-tcell-order-sign"
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- servers the bench owns -------------------------------------------------------------
class _SocketServer:
    """A loopback listener that counts connections and answers each in its own thread."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            self.reply(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def reply(self, conn: socket.socket) -> None:
        raise NotImplementedError


class Trickle(_SocketServer):
    """A 'FHIR server' that answers 200 with Content-Length: 60 and sends a byte every 0.5 s."""

    def __init__(self) -> None:
        super().__init__()
        self.base = f"http://127.0.0.1:{self.port}/fhir"

    def reply(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 60\r\n\r\n")
        for _ in range(60):
            conn.sendall(b" ")
            time.sleep(0.5)


class Recorder(_SocketServer):
    """Counts connections to a loopback port (an 'internal service' SSRF would reach)."""

    def reply(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class KeyServer:
    """Serves an empty JWK Set at any path; counts downloads."""

    def __init__(self) -> None:
        self.downloads = 0

        def app(environ, start_response):
            self.downloads += 1
            return Response(json.dumps({"keys": []}), content_type="application/json")(environ, start_response)

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()


# -- the service ------------------------------------------------------------------------
@dataclass
class Service:
    base: str
    process: subprocess.Popen
    data_dir: Path
    port: int


def start_service(run_dir: Path, pair: KeyPair, fhir_prefixes: list[str], key_prefix: str, workers: int) -> Service:
    knows_new_keys = "fhir_servers" in (ROOT / "cds_service/security/_settings.py").read_text()
    port = free_port()
    (run_dir / "ehr-jwks.json").write_text(json.dumps({"keys": [pair.public_jwk()]}))
    servers = ", ".join(json.dumps(p) for p in fhir_prefixes)
    extra = f"fhir_servers = [{servers}]\nexplain = false\n" if knows_new_keys else ""
    jku_extra = "fhir_servers = []\n" if knows_new_keys else ""
    (run_dir / "settings.toml").write_text(f"""
explain_enabled = true
data_dir = "{run_dir / 'data'}"
workers = {workers}
[security]
require_token = true
[[security.issuers]]
iss = "{ISS}"
jwks_file = "ehr-jwks.json"
{extra}
[[security.issuers]]
iss = "{JKU_ISS}"
jku_prefixes = ["{key_prefix}"]
{jku_extra}
""")
    env = {**os.environ, "MM_CDS_CONFIG": str(run_dir / "settings.toml"), "PYTHONPATH": str(ROOT),
           "MM_CDS_LOG_LEVEL": "ERROR",
           "MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES": "all"}  # the go-live gate, accepted explicitly
    process = subprocess.Popen([sys.executable, "-m", "cds_service", "serve", "--prod", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(run_dir / "server.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited: {(run_dir / 'server.log').read_text()[-2000:]}")
        try:
            if requests.get(base + "/ready", timeout=1).status_code == 200:
                return Service(base, process, run_dir / "data", port)
        except requests.RequestException:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("the service did not become ready")


# -- traffic ----------------------------------------------------------------------------
@dataclass
class Seen:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def p95(self) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=20)[-1] * 1000


def signed(pair: KeyPair, base: str, path: str = SIGN, **changes) -> str:
    return pair.sign(claims(ISS, base + path, **changes))


def hook_body(fhir_server: str, patient: str = "p1") -> dict:
    body = order_sign(patient=patient)
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = {"access_token": "test-token", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "user/*.read", "subject": "mm-cds"}
    return body


def legitimate(service: Service, pair: KeyPair, fhir: str, stop: threading.Event, seen: Seen, lock: threading.Lock) -> None:
    session = requests.Session()
    i = 0
    while not stop.is_set():
        i += 1
        started = time.monotonic()
        try:
            if i % 4 == 0:
                ok = session.get(service.base + "/health", timeout=10).status_code == 200
            else:
                r = session.post(service.base + SIGN, json=hook_body(fhir), timeout=10,
                                 headers={"Authorization": f"Bearer {signed(pair, service.base)}"})
                ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        with lock:
            seen.latencies.append(time.monotonic() - started)
            seen.errors += 0 if ok else 1


@dataclass
class Row:
    name: str
    sent: int
    outcome: str
    seen: Seen


def run_attack(name: str, service: Service, pair: KeyPair, fhir: str, attack: Callable[[], tuple[int, str]],
               min_seconds: float = 3.0) -> Row:
    stop, seen, lock = threading.Event(), Seen(), threading.Lock()
    threads = [threading.Thread(target=legitimate, args=(service, pair, fhir, stop, seen, lock)) for _ in range(4)]
    for t in threads:
        t.start()
    started = time.monotonic()
    time.sleep(0.3)
    sent, outcome = attack()
    time.sleep(max(0.0, min_seconds - (time.monotonic() - started)))
    stop.set()
    for t in threads:
        t.join()
    return Row(name, sent, outcome, seen)


def jwt_matrix(service: Service, pair: KeyPair) -> list[tuple[str, str, int, bool]]:
    """The token matrix of tests/test_security.py against the multi-worker server: each
    case on discovery, a service call and feedback; (case, endpoint, status, as expected)."""
    impostor = KeyPair.make("ES384", kid=pair.kid)
    stranger = KeyPair.make("ES384", kid="never-published")
    hs_secret = pair.public_pem()
    endpoints = {"discovery": ("GET", "/cds-services"), "service": ("POST", SIGN),
                 "feedback": ("POST", SIGN + "/feedback")}

    def cases(aud: str) -> dict[str, tuple[str, bool]]:
        now = int(time.time())
        return {
            "valid": (pair.sign(claims(ISS, aud)), True),
            "alg none": (handmade({"alg": "none", "typ": "JWT", "kid": pair.kid}, claims(ISS, aud), None), False),
            "HS256 keyed with the public key": (
                handmade({"alg": "HS256", "typ": "JWT", "kid": pair.kid}, claims(ISS, aud), hs_secret), False),
            "wrong aud": (pair.sign(claims(ISS, service.base + "/cds-services/another")), False),
            "expired": (pair.sign(claims(ISS, aud, iat=now - 400, exp=now - 120)), False),
            "iat in the future": (pair.sign(claims(ISS, aud, iat=now + 600, exp=now + 900)), False),
            "unknown iss": (pair.sign(claims("https://stranger.example.net", aud)), False),
            "unknown kid": (stranger.sign(claims(ISS, aud)), False),
            "jku off the allow-list": (pair.sign(claims(ISS, aud), jku="https://attacker.example.net/jwks.json"), False),
            "same kid, other key": (impostor.sign(claims(ISS, aud)), False),
            "no jti": (pair.sign(claims(ISS, aud, jti=None)), False),
            "lifetime too long": (pair.sign(claims(ISS, aud, exp=now + 86400)), False),
            "not a JWT": ("not-a-jwt", False),
        }

    results = []
    for endpoint, (method, path) in endpoints.items():
        for case, (token, accept) in cases(service.base + path).items():
            if endpoint == "service":
                body: dict | None = hook_body("http://127.0.0.1:1/unused")
                body.pop("fhirServer")  # type: ignore[union-attr]
                body["prefetch"] = {"patient": PATIENT}  # type: ignore[index]
            elif endpoint == "feedback":
                body = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                                      "outcomeTimestamp": "2026-06-15T12:00:00Z"}]}
            else:
                body = None
            r = requests.request(method, service.base + path, json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
            # a refusal is 401; an accepted service call may still be 412 (prefetch incomplete)
            results.append((case, endpoint, r.status_code, (r.status_code != 401) == accept))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="attack requests per attack (where it is a count)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated attack names")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log of the bench's own servers

    pair = KeyPair.make("ES384")
    fhir_server = FhirServer(FhirStore([PATIENT]), page_size=1000)
    fhir_server.__enter__()
    fhir = fhir_server.base
    trickle, internal, keys = Trickle(), Recorder(), KeyServer()
    run_dir = Path(tempfile.mkdtemp(prefix="mm-cds-attacks-"))
    service = start_service(run_dir, pair, [fhir, trickle.base], keys.base + "/keys/", args.workers)
    n = args.n

    def ssrf() -> tuple[int, str]:
        targets = [f"http://127.0.0.1:{internal.port}/", f"http://0.0.0.0:{internal.port}/",
                   f"http://2130706433:{internal.port}/", f"http://localhost:{internal.port}/x",
                   f"{service.base}/", f"{fhir}/../../admin", f"http://u:p@127.0.0.1:{internal.port}/",
                   "http://127.0.0.1:1/", "http://127.0.0.1:22/", "http://127.0.0.1:5432/"]
        targets = (targets * (n // len(targets) + 1))[:max(n, len(targets))]
        statuses: dict[int, int] = {}
        leaked = 0
        for url in targets:
            r = requests.post(service.base + SIGN, json=hook_body(url), timeout=30,
                              headers={"Authorization": f"Bearer {signed(pair, service.base)}"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            text = r.text
            leaked += any(w in text for w in ("ConnectionError", "connection failed", "HTTP 404", "timed out"))
        return len(targets), (f"internal port hit {internal.hits}x; statuses {dict(sorted(statuses.items()))}; "
                              f"412s revealing network detail: {leaked}")

    def slow_fhir() -> tuple[int, str]:
        count = min(n, 9)

        def one(_: int) -> float:
            started = time.monotonic()
            requests.post(service.base + SIGN, json=hook_body(trickle.base), timeout=120,
                          headers={"Authorization": f"Bearer {signed(pair, service.base)}"})
            return time.monotonic() - started

        with ThreadPoolExecutor(count) as pool:
            durations = list(pool.map(one, range(count)))
        return count, f"attack calls took max {max(durations):.1f} s (fetch_timeout 5 s)"

    def slow_clients() -> tuple[int, str]:
        count = 16
        sockets = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", service.port))
            s.sendall(b"POST " + SIGN.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
            sockets.append(s)
        started = time.monotonic()
        health = []
        while time.monotonic() - started < 5:
            t0 = time.monotonic()
            try:
                ok = requests.get(service.base + "/health", timeout=2).status_code == 200
            except requests.RequestException:
                ok = False
            health.append(ok)
            time.sleep(max(0.0, 1 - (time.monotonic() - t0)))
        for s in sockets:
            s.close()
        return count, f"/health answered {sum(health)}/{len(health)} within 2 s"

    def replay() -> tuple[int, str]:
        token = signed(pair, service.base)
        accepted = 0
        for _ in range(20):
            r = requests.post(service.base + SIGN, json=hook_body(fhir), headers={"Authorization": f"Bearer {token}"},
                              timeout=30)
            accepted += r.status_code == 200
        return 20, f"accepted {accepted}/20 (1 is right)"

    def forged_host() -> tuple[int, str]:
        other = "http://other-service.example"
        accepted = 0
        for _ in range(n):
            token = pair.sign(claims(ISS, other + "/cds-services"))
            r = requests.get(service.base + "/cds-services", timeout=10,
                             headers={"Authorization": f"Bearer {token}", "Host": "other-service.example"})
            accepted += r.status_code == 200
        return n, f"accepted {accepted}/{n} (0 is right)"

    def jku_flood() -> tuple[int, str]:
        before = keys.downloads
        for i in range(100):
            now = int(time.time())
            token = handmade({"alg": "ES384", "typ": "JWT", "kid": f"k{uuid.uuid4().hex[:8]}",
                              "jku": f"{keys.base}/keys/{i}/jwks.json"},
                             {"iss": JKU_ISS, "aud": service.base + "/cds-services", "iat": now, "exp": now + 300,
                              "jti": str(uuid.uuid4())}, None)
            requests.get(service.base + "/cds-services", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        return 100, f"key-set downloads {keys.downloads - before} (at most 1 per worker per cooldown is right)"

    def explain_proxy() -> tuple[int, str]:
        traces = 0
        for _ in range(n):
            r = requests.post(service.base + SIGN + "?explain=1", json=hook_body(fhir), timeout=30,
                              headers={"Authorization": f"Bearer {signed(pair, service.base)}",
                                       "X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"})
            traces += r.status_code == 200 and "extension" in r.json()
        return n, f"traces returned {traces}/{n} (issuer not named for explain: 0 is right)"

    def reload_flood() -> tuple[int, str]:
        count = min(n, 5)
        accepted = 0
        for _ in range(count):
            try:
                accepted += requests.post(service.base + "/admin/reload", timeout=30).status_code < 300
            except requests.RequestException:
                pass
        time.sleep(6)  # the reloads' CPU and worker replacement overlap the legitimate traffic
        return count, f"reloads accepted without a credential {accepted}/{count}"

    def feedback_outage() -> tuple[int, str]:
        count = min(n, 8)
        db = sqlite3.connect(service.data_dir / "feedback.sqlite3", timeout=1, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")  # the database is unavailable to every writer

        def one(_: int) -> tuple[int, float]:
            started = time.monotonic()
            token = pair.sign(claims(ISS, service.base + SIGN + "/feedback"))
            try:
                status = requests.post(service.base + SIGN + "/feedback", timeout=60,
                                       headers={"Authorization": f"Bearer {token}"},
                                       json={"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                                                           "outcomeTimestamp": "2026-06-15T12:00:00Z"}]}).status_code
            except requests.RequestException:
                status = 0
            return status, time.monotonic() - started

        try:
            with ThreadPoolExecutor(count) as pool:
                results = list(pool.map(one, range(count)))
        finally:
            db.execute("ROLLBACK")
            db.close()
        statuses = sorted({s for s, _ in results})
        return count, f"feedback statuses {statuses}, max {max(d for _, d in results):.1f} s"

    attacks: dict[str, Callable[[], tuple[int, str]]] = {
        "ssrf": ssrf, "slow_fhir": slow_fhir, "slow_clients": slow_clients, "replay": replay,
        "forged_host_aud": forged_host, "jku_flood": jku_flood, "explain_via_proxy": explain_proxy,
        "admin_reload_flood": reload_flood, "feedback_db_outage": feedback_outage,
    }
    chosen = [a for a in args.only.split(",") if a] or list(attacks)
    rows = []
    matrix: list[tuple[str, str, int, bool]] = []
    try:
        matrix = jwt_matrix(service, pair)
        rows.append(run_attack("baseline (no attack)", service, pair, fhir, lambda: (0, "-")))
        for name in chosen:
            try:
                rows.append(run_attack(name, service, pair, fhir, attacks[name]))
            except Exception as exc:  # noqa: BLE001  a benchmark reports and goes on
                rows.append(Row(name, 0, f"attack failed to run: {type(exc).__name__}: {exc}"[:150], Seen()))
            print(f"  done: {name}", file=sys.stderr, flush=True)
    finally:
        service.process.terminate()
        try:
            service.process.wait(30)
        except subprocess.TimeoutExpired:
            service.process.kill()
        fhir_server.__exit__(None, None, None)
    print(f"\nattack matrix: {ROOT} ({args.workers} gunicorn workers, 4 legitimate threads)\n")
    print(f"| {'attack':<22} | {'sent':>4} | {'legit calls':>11} | {'errors':>6} | {'p95 ms':>8} | what the attack achieved")
    print(f"|{'-' * 24}|{'-' * 6}|{'-' * 13}|{'-' * 8}|{'-' * 10}|{'-' * 40}")
    for row in rows:
        print(f"| {row.name:<22} | {row.sent:>4} | {len(row.seen.latencies):>11} | {row.seen.errors:>6} | "
              f"{row.seen.p95():>8.0f} | {row.outcome}")
    wrong = [m for m in matrix if not m[3]]
    print(f"\nJWT matrix on the {args.workers}-worker server: {len(matrix) - len(wrong)}/{len(matrix)} as expected "
          f"({len({m[0] for m in matrix})} cases x 3 endpoints; refusals 401, the valid token accepted)")
    for case, endpoint, status, _ in wrong:
        print(f"  NOT AS EXPECTED: {case} on {endpoint}: HTTP {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
