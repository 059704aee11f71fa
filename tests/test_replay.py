"""The jti replay store (issue 10 item 4): one store in the service's database, shared by
every worker of an instance and by every replica; a token is accepted exactly once, rows
expire with their token, and a store that cannot answer refuses the token (fail closed).
Every test of the store runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cds_service import config, create_app, security, storage, web
from cds_service.errors import Unauthenticated

from .conftest import NOW
from .support.gunicorn import Gunicorn
from .support.ports import free_port
from .support.tokens import KeyPair, claims

ISS = "https://ehr.example.org"
SENDS = 20


def guard(backend: dict, clock=time.time, purge_every: int = 256) -> security.ReplayGuard:
    made = security.open_replay_guard(config.load(backend, environ={}), clock)
    made.purge_every = purge_every
    return made


def test_a_jti_is_accepted_once_by_two_guards_sharing_the_database(backend):
    first, second = guard(backend), guard(backend)  # two workers, or two replicas
    expires = time.time() + 300
    assert first.first_use(ISS, "j-1", expires) is True
    assert first.first_use(ISS, "j-1", expires) is False
    assert second.first_use(ISS, "j-1", expires) is False
    assert second.first_use("https://other.example.org", "j-1", expires) is True  # keyed by (iss, jti)


def test_racing_threads_on_two_guards_let_exactly_one_win(backend):
    guards = [guard(backend), guard(backend)]
    expires = time.time() + 300
    start = threading.Barrier(16)

    def attempt(i: int) -> bool:
        start.wait()
        return guards[i % 2].first_use(ISS, "raced", expires)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(16)))
    assert results.count(True) == 1 and results.count(False) == 15


def test_expired_rows_are_deleted_in_bounded_batches(backend):
    now = [1_000_000.0]
    store = guard(backend, clock=lambda: now[0], purge_every=10)
    for i in range(25):
        assert store.first_use(ISS, f"old-{i}", now[0] + 60)
    assert store.stored() == 25
    now[0] += 120  # every one of them has expired
    for i in range(10):
        assert store.first_use(ISS, f"new-{i}", now[0] + 60)
    assert store.stored() == 10  # the tenth insert purged the 25 expired rows
    assert store.first_use(ISS, "old-3", now[0] + 60) is True  # forgotten with its token


@pytest.mark.slow
def test_a_store_that_cannot_answer_refuses_the_token(backend, tmp_path):
    store = guard(backend)
    if "database_url" in backend:
        store.db = storage.PostgresDatabase(f"postgresql://nobody@127.0.0.1:{free_port()}/none", timeout=1)
    else:
        blocker = sqlite3.connect(Path(backend["data_dir"]) / "feedback.sqlite3", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # holds the write lock beyond the store's timeout
    started = time.monotonic()
    with pytest.raises(Unauthenticated, match="replay check unavailable"):
        store.first_use(ISS, "j-down", time.time() + 300)
    assert time.monotonic() - started < 4


def test_a_replay_check_outage_is_a_401_saying_so_and_logs_no_token(backend, kb, caplog):
    keys = KeyPair.make("ES384")
    app = create_app({**backend, "host": "127.0.0.1", "public_base_url": "https://cds.example.org",
                      "security": {"issuers": [{"iss": ISS, "jwks": {"keys": [keys.public_jwk()]}}]}},
                     kb=kb, clock=lambda: NOW)
    replay = web.state_of(app).security.verifier.replay
    replay.db = storage.PostgresDatabase(f"postgresql://nobody@127.0.0.1:{free_port()}/none", timeout=1)
    token = keys.sign(claims(ISS, "https://cds.example.org/cds-services"))
    response = app.test_client().get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "replay check unavailable" in response.headers["WWW-Authenticate"]
    assert response.get_json()["issue"][0]["diagnostics"] == "replay check unavailable"
    assert token not in caplog.text
    assert any(getattr(r, "event", None) == "replay_store_error" for r in caplog.records)
    web.state_of(app).feedback.close()


# --- the real server: several workers, and two instances sharing PostgreSQL ------------

def _settings_file(tmp_path: Path, keys: KeyPair) -> str:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [keys.public_jwk()]}))
    path = tmp_path / "settings.toml"
    path.write_text(f'[security]\n[[security.issuers]]\niss = "{ISS}"\njwks_file = "jwks.json"\n')
    return str(path)


def _send(bases: list[str], token: str) -> list[requests.Response]:
    """The same token SENDS times at once, spread over the servers (new connection each)."""
    def one(i: int) -> requests.Response:
        return requests.get(bases[i % len(bases)] + "/cds-services", headers={"Authorization": f"Bearer {token}"},
                            timeout=30)

    with ThreadPoolExecutor(SENDS) as pool:
        return list(pool.map(one, range(SENDS)))


def _assert_accepted_once(responses: list[requests.Response]) -> None:
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 1, statuses
    refused = [r for r in responses if r.status_code == 401]
    assert len(refused) == SENDS - 1
    assert all("jti has already been used" in r.headers["WWW-Authenticate"] for r in refused)


def _start(tmp_path: Path, name: str, keys: KeyPair, **settings: str) -> Gunicorn:
    workdir = tmp_path / name
    workdir.mkdir()
    port = free_port()
    server = Gunicorn(workdir, port=port, workers="3", public_base_url=f"http://127.0.0.1:{port}",
                      config=_settings_file(workdir, keys), **settings)
    server.wait_ready()
    return server


@pytest.mark.slow
@pytest.mark.gunicorn
def test_under_gunicorn_with_three_workers_a_token_sent_20_times_is_accepted_once(tmp_path):
    keys = KeyPair.make("ES384")
    server = _start(tmp_path, "one", keys)
    try:
        token = keys.sign(claims(ISS, server.base + "/cds-services"))
        _assert_accepted_once(_send([server.base], token))
        fresh = keys.sign(claims(ISS, server.base + "/cds-services"))
        assert _send([server.base], fresh)[0].status_code in (200, 401)  # the store keeps serving
    finally:
        assert server.stop() == 0


@pytest.mark.slow
@pytest.mark.gunicorn
@pytest.mark.postgres
def test_two_instances_sharing_postgresql_accept_a_token_once(tmp_path, postgres):
    keys = KeyPair.make("ES384")
    url = postgres.new_database()
    port = free_port()
    base = f"http://127.0.0.1:{port}"  # both replicas behind one public URL: the aud
    servers = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            server = Gunicorn(workdir, port=port if name == "a" else None, workers="2", public_base_url=base,
                              database_url=url, config=_settings_file(workdir, keys))
            servers.append(server)
            server.wait_ready()
        token = keys.sign(claims(ISS, base + "/cds-services"))
        _assert_accepted_once(_send([s.base for s in servers], token))
        with storage.PostgresDatabase(url).connect() as conn:
            assert conn.execute("SELECT COUNT(*) FROM replay_jti").fetchone()[0] == 1
    finally:
        for server in servers:
            server.stop()
