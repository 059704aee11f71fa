"""The reload credential and coalescing (issue 10 item 8): with security.admin_token set,
/admin/reload needs `Authorization: Bearer <admin_token>`; without it only the
development server (loopback, no trusted issuer) reloads; a burst of reload requests
runs one reload and every request gets its outcome."""

from __future__ import annotations

import logging
import threading

import pytest

from cds_service import create_app, web
from cds_service.errors import ConfigurationError

from .support.tokens import KeyPair

TOKEN = "s3cret-admin-token-0123456789"
JWKS = {"keys": [KeyPair.make("ES384").public_jwk()]}
ISSUERS = [{"iss": "https://ehr.example.org", "jwks": JWKS}]


@pytest.fixture()
def make(kb, tmp_path):
    made = []

    def build(**security):
        app = create_app({"host": "127.0.0.1", "data_dir": str(tmp_path / "data"), "security": security}, kb=kb)
        made.append(app)
        return app.test_client()

    yield build
    for app in made:
        web.state_of(app).feedback.close()


def test_with_an_admin_token_a_reload_needs_it(make):
    client = make(admin_token=TOKEN, issuers=ISSUERS)
    missing = client.post("/admin/reload")
    assert missing.status_code == 401 and "admin token" in missing.get_json()["issue"][0]["diagnostics"]
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
    assert wrong.status_code == 401
    right = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200 and right.get_json()["reloaded"] is True


def test_without_an_admin_token_a_service_trusting_issuers_refuses_any_reload(make):
    refused = make(issuers=ISSUERS).post("/admin/reload")
    assert refused.status_code == 403 and "set security.admin_token" in refused.get_json()["issue"][0]["diagnostics"]


def test_without_an_admin_token_the_loopback_development_server_still_reloads(make):
    assert make().post("/admin/reload").status_code == 200


def test_a_short_admin_token_stops_startup(kb, tmp_path):
    with pytest.raises(ConfigurationError, match="admin_token"):
        create_app({"data_dir": str(tmp_path), "security": {"admin_token": "short"}}, kb=kb)


def test_a_burst_of_reloads_runs_one_and_each_gets_its_outcome(make, caplog):
    client = make(admin_token=TOKEN)
    answers = []
    start = threading.Barrier(6)

    def ask() -> None:
        start.wait()
        answers.append(client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).get_json())

    with caplog.at_level(logging.INFO):
        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(answers) == 6 and all(a["reloaded"] for a in answers)
    assert sum(not a["coalesced"] for a in answers) == 1  # one reload ran; five shared its outcome
    assert sum(getattr(r, "event", None) == "knowledge_reloaded" for r in caplog.records) == 1
    assert len({a["fingerprint"] for a in answers}) == 1
