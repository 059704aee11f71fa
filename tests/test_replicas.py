"""Scale-out, proven on one machine with real components: two `mm-cds serve --prod`
replicas (gunicorn, 2 workers each) behind Debian's nginx (deploy/nginx/run.py, one
--upstream per replica), sharing one PostgreSQL server started here (tests/support/replicas.py).

What is shared must be shared: the JWT replay store (a token used at A is refused at B),
the issued cards (feedback at B links to A's card), the knowledge (a rolling reload, A then
B, drops nothing and ends on one fingerprint); a replica killed mid-load loses no feedback
that got a 200; the issued-card and replay tables stay bounded by their expiry.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
import requests

from .support.nginx import require_nginx
from .support.postgres import PostgresCluster, require_binaries
from .support.replicas import CLI, Load, Replicas

pytestmark = [pytest.mark.slow, pytest.mark.gunicorn, pytest.mark.nginx, pytest.mark.postgres]

RETENTION_SECONDS = 4.0  # issued_card_days for this cluster, in seconds: cards expire during the run
LEEWAY = 1  # seconds; with LIFETIME, a jti row may be forgotten 3 s after its token was made
LIFETIME = 2
BOUNDED_CALLS = 6000  # (e) in the test (long enough for the bounds to bind at 500 calls/s); bench/replicas.py runs 20,000


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    require_nginx()
    cluster = PostgresCluster(require_binaries()).start()
    shape = Replicas(tmp_path_factory.mktemp("replicas"), cluster, issued_card_seconds=RETENTION_SECONDS,
                     leeway=LEEWAY)
    try:
        yield shape.start()
    finally:
        if hasattr(shape, "proxy"):
            shape.stop()
        cluster.stop()


def test_a_token_accepted_by_one_replica_is_refused_by_the_other(replicas):
    a, b = (replicas.replicas[n].base for n in "AB")
    token = replicas.token()
    session = requests.Session()
    assert replicas.hook_call(session, a, token).status_code == 200
    replayed = replicas.hook_call(session, b, token)
    assert replayed.status_code == 401
    assert "jti has already been used" in json.dumps(replayed.json())
    print(f"\n(a) token accepted by A (200), replayed to B: {replayed.status_code}")


def test_feedback_at_one_replica_links_to_the_card_another_issued(replicas):
    a, b = (replicas.replicas[n].base for n in "AB")
    session = requests.Session()
    cards = replicas.hook_call(session, a).json()["cards"]
    card = cards[0]["uuid"]
    answer = replicas.feedback(session, card, b, comment="linked across replicas")
    assert answer.status_code == 200 and answer.json() == {"stored": 1, "duplicates": 0}
    deadline = time.monotonic() + 10  # A's writer records the card off the request path
    while time.monotonic() < deadline:
        rows = replicas.query("SELECT linked, code FROM feedback_linked WHERE card_uuid = %s", (card,))
        if rows and rows[0][0] == 1:
            break
        time.sleep(0.1)
    assert rows == [(1, rows[0][1])] and rows[0][1]
    report = subprocess.run([CLI, "feedback-report", "--json", "--database-url", replicas.database_url],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    print(f"\n(b) {len(cards)} cards issued by A; feedback at B for {rows[0][1]}: linked={rows[0][0]}")


def test_a_rolling_knowledge_change_drops_nothing_and_ends_on_one_fingerprint(replicas):
    before = replicas.fingerprints("A") | replicas.fingerprints("B")
    assert len(before) == 1
    load = Load(lambda s: replicas.hook_call(s).status_code, threads=3).start()
    time.sleep(1)
    plan = replicas.knowledge_dirs[0] / "PlanDefinition-mm-tcell-chart.json"
    text = plan.read_text()
    plan.write_text(text.replace('"title": "Myeloma T-cell immunotherapy: chart review"',
                                 '"title": "Myeloma T-cell immunotherapy: chart review (rolled out)"', 1))
    seen = {}
    for name in "AB":
        answer = replicas.reload(name)
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen[name] = replicas.fingerprints(name)
            if len(seen[name]) == 1 and not seen[name] & before:
                break
            time.sleep(0.2)
        if name == "A":
            assert replicas.fingerprints("B") == before  # B still on the old knowledge: a rolling change
    time.sleep(1)
    statuses = load.stop()
    print(f"\n(c) rolling reload A then B under load: {dict(statuses)} in {load.seconds:.1f} s; "
          f"fingerprint {before} -> A {seen['A']}, B {seen['B']}")
    assert load.failures() == 0 and sum(statuses.values()) > 20
    assert seen["A"] == seen["B"] and len(seen["A"]) == 1 and not seen["A"] & before


def test_issued_card_and_replay_tables_stay_bounded(replicas):
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), replicas.count("issued_cards"), replicas.count("replay_jti")))
            stop.wait(0.5)

    cards_before = replicas.count("issued_cards")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load = Load(lambda s: replicas.hook_call(s, lifetime=LIFETIME).status_code, threads=6,
                total=BOUNDED_CALLS).start()
    statuses = load.join()
    stop.set()
    sampler.join()
    rate = BOUNDED_CALLS / load.seconds
    cards_per_call = 8
    # A jti row lives LIFETIME + LEEWAY s, then goes at the next purge (every 256 accepted
    # tokens per worker, 4 workers, 1000 rows a time); a card record lives RETENTION_SECONDS,
    # then goes at its worker's next purge (every 1000 cards it writes, up to twice as many;
    # a commit may hold one call per client thread). Twice the rate, for its ups and downs.
    # The rows left by the tests before are old: deleted during the run.
    jti_bound = int(rate * (LIFETIME + LEEWAY) * 3 + 4 * 256)
    card_bound = int(rate * cards_per_call * RETENTION_SECONDS * 2) + 4 * (1000 + cards_per_call * 6) + cards_before
    peak_cards, peak_jti = max(s[1] for s in samples), max(s[2] for s in samples)
    print(f"\n(e) {BOUNDED_CALLS} calls in {load.seconds:.1f} s ({rate:.0f}/s), {dict(statuses)}; "
          f"issued cards: peak {peak_cards}, end {samples[-1][1]} (bound {card_bound}, "
          f"{BOUNDED_CALLS * cards_per_call} issued); replay_jti: peak {peak_jti}, end {samples[-1][2]} "
          f"(bound {jti_bound}, {BOUNDED_CALLS} accepted)")
    assert statuses == {"200": BOUNDED_CALLS}
    assert peak_jti <= jti_bound < BOUNDED_CALLS
    assert peak_cards <= card_bound < BOUNDED_CALLS * cards_per_call


def test_a_replica_killed_mid_load_loses_no_feedback_that_got_a_200(replicas):
    stored: list[str] = []
    lock = threading.Lock()

    def call_and_answer(session: requests.Session) -> str:
        hook = replicas.hook_call(session)
        if hook.status_code != 200:
            return f"hook {hook.status_code}"
        card = hook.json()["cards"][0]["uuid"]
        answer = replicas.feedback(session, card, comment="killed mid-load")
        if answer.status_code == 200:
            with lock:
                stored.append(card)
        return f"{answer.status_code}" if answer.status_code == 200 else f"feedback {answer.status_code}"

    load = Load(call_and_answer, threads=4).start()
    time.sleep(3)
    killed = replicas.kill("A")
    at_kill = len(stored)
    time.sleep(4)
    statuses = load.stop()
    found = {row[0] for row in replicas.query("SELECT card_uuid FROM feedback WHERE user_comment = %s",
                                              ("killed mid-load",))}
    print(f"\n(d) killed A ({len(killed)} processes) mid-load: {dict(statuses)} in {load.seconds:.1f} s; "
          f"feedback 200s {len(stored)} ({len(stored) - at_kill} after the kill), in the database "
          f"{len(set(stored) & found)}")
    assert stored and set(stored) <= found
    # nginx fails over: calls go on (to B) after the kill, and only what was in flight on A
    # (at most one hook call or feedback POST per client thread) failed.
    assert len(stored) > at_kill and load.failures() <= 4
    assert requests.get(replicas.base + "/ready", timeout=5).status_code == 200  # B serves on
