"""CDS Hooks 2.0 client authentication: bearer JWTs on every endpoint, what is refused and
why, the start-up rule off loopback, jku served by a loopback server, explain access."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from cds_service import cli, config, create_app, security, web
from cds_service.errors import ConfigurationError, UnsafeUrl

from .conftest import NOW
from .support.cards import member_codes
from .support.requests_ import empty_prefetch, order_sign
from .support.tokens import KeyPair, claims, handmade

ROOT = Path(__file__).resolve().parent.parent
ISS = "https://ehr.example.org"
BASE = "https://cds.example.org"
SIGN = "/cds-services/mm-tcell-order-sign"
ENDPOINTS = {
    "discovery": ("GET", "/cds-services"),
    "service": ("POST", SIGN),
    "feedback": ("POST", SIGN + "/feedback"),
}


@pytest.fixture(scope="module")
def keys() -> dict[str, KeyPair]:
    made = {alg: KeyPair.make(alg) for alg in ("ES384", "RS384", "ES256", "PS256")}
    made["impostor"] = KeyPair.make("ES384", kid=made["ES384"].kid)  # same kid, other key
    return made


def trusted(keys, **extra) -> dict:
    jwks = {"keys": [keys[a].public_jwk() for a in ("ES384", "RS384", "ES256", "PS256")]}
    return {"issuers": [{"iss": ISS, "jwks": jwks, **extra}]}


def make_app(kb, host="0.0.0.0", base=BASE, **table):
    settings = {"host": host, "explain_enabled": True, "security": table,
                # the shipped knowledge does not meet the go-live gate (docs/terminology.md): /ready
                # would answer 503; these tests are about who may call, so the gate is accepted
                "accept_unverified_treatment_codes": ("all",)}
    if base:
        settings["public_base_url"] = base
    return create_app(settings, kb=kb, clock=lambda: NOW)


@pytest.fixture(scope="module")
def secured(kb, keys):
    """One secured app for the module: a verdict on a token depends on the token alone (each
    token has a fresh jti), and building an app costs half a second."""
    app = make_app(kb, **trusted(keys))
    yield app
    web.state_of(app).feedback.close()


def call(client, kb, endpoint: str, token: str | None = None, remote: str = "127.0.0.1", query: str = ""):
    method, path = ENDPOINTS[endpoint]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if endpoint == "service":
        prefetch = empty_prefetch(kb.services["mm-tcell-order-sign"].discovery(), {"resourceType": "Patient", "id": "p1"})
        body = order_sign(prefetch=prefetch)
    elif endpoint == "feedback":
        body = {"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-06-15T12:00:00Z"}]}
    else:
        body = None
    return client.open(path + query, method=method, json=body, headers=headers, environ_base={"REMOTE_ADDR": remote})


def codes(body: dict) -> list[str]:
    return sorted(member_codes(body["cards"]))


def assert_refused(response, reason: str) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "login"
    assert reason in body["issue"][0]["diagnostics"], body
    assert reason.replace('"', "'") in challenge


# -- the negative matrix ------------------------------------------------------------------
def _url(endpoint: str) -> str:
    return BASE + ENDPOINTS[endpoint][1]


NEGATIVE = {
    "alg none": (lambda k, aud: handmade({"alg": "none", "typ": "JWT", "kid": k["ES384"].kid}, claims(ISS, aud), None),
                 "alg 'none' is not accepted"),
    # The classic key confusion: HMAC keyed with the (public) verification key.
    "HS256 with the public key as secret": (
        lambda k, aud: handmade({"alg": "HS256", "typ": "JWT", "kid": k["RS384"].kid}, claims(ISS, aud),
                                k["RS384"].public_pem()),
        "alg 'HS256' is not accepted"),
    "wrong aud": (lambda k, aud: k["ES384"].sign(claims(ISS, BASE + "/cds-services/another-service")),
                  "is not this endpoint's URL"),
    "wrong aud array": (lambda k, aud: k["ES384"].sign(claims(ISS, ["https://elsewhere.example.org/cds-services"])),
                        "is not this endpoint's URL"),
    "expired": (lambda k, aud: k["ES384"].sign(claims(ISS, aud, exp=claims(ISS, aud)["iat"] - 120)), "token expired"),
    "iat in the future": (lambda k, aud: k["ES384"].sign(claims(ISS, aud, iat=claims(ISS, aud)["iat"] + 600,
                                                                exp=claims(ISS, aud)["iat"] + 900)),
                          "issued in the future"),
    "unknown iss": (lambda k, aud: k["ES384"].sign(claims("https://stranger.example.net", aud)),
                    "issuer 'https://stranger.example.net' is not trusted"),
    "unknown kid": (lambda k, aud: KeyPair.make("ES384", kid="never-published").sign(claims(ISS, aud)),
                    "unknown kid 'never-published'"),
    "jku not on the allow-list": (
        lambda k, aud: k["ES384"].sign(claims(ISS, aud), jku="https://attacker.example.net/jwks.json"),
        "jku 'https://attacker.example.net/jwks.json' is not on the allow-list"),
    "signed by another key with the same kid": (lambda k, aud: k["impostor"].sign(claims(ISS, aud)),
                                                "signature does not verify"),
    "no jti": (lambda k, aud: k["ES384"].sign(claims(ISS, aud, jti=None)), "claim 'jti' is required"),
    "lifetime too long": (lambda k, aud: k["ES384"].sign(claims(ISS, aud, exp=claims(ISS, aud)["iat"] + 86400)),
                          "lifetime"),
    "not a JWT": (lambda k, aud: "not-a-jwt", "not a JWT"),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_a_bad_token_is_refused_with_401_and_the_reason(secured, kb, keys, case, endpoint):
    make_token, reason = NEGATIVE[case]
    response = call(secured.test_client(), kb, endpoint, make_token(keys, _url(endpoint)))
    assert_refused(response, reason)


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_a_replayed_token_is_refused(secured, kb, keys, endpoint):
    client = secured.test_client()
    token = keys["ES384"].sign(claims(ISS, _url(endpoint)))
    assert call(client, kb, endpoint, token).status_code == 200
    assert_refused(call(client, kb, endpoint, token), "jti has already been used")


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_no_token_is_refused_off_loopback(secured, kb, endpoint):
    assert_refused(call(secured.test_client(), kb, endpoint), "a bearer JWT is required")


def test_a_non_bearer_authorization_is_refused(secured):
    response = secured.test_client().get("/cds-services", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_refused(response, "Authorization must be 'Bearer <JWT>'")


def test_a_present_but_invalid_token_is_refused_on_loopback_too(kb, keys):
    app = make_app(kb, host="127.0.0.1", **trusted(keys))
    client = app.test_client()
    assert client.get("/cds-services").status_code == 200  # no token: allowed on loopback
    assert_refused(client.get("/cds-services", headers={"Authorization": "Bearer x.y.z"}), "not a JWT")
    expired = keys["ES384"].sign(claims(ISS, BASE + "/cds-services", exp=1))
    assert_refused(client.get("/cds-services", headers={"Authorization": f"Bearer {expired}"}), "token expired")


# -- accepted tokens ----------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256", "PS256"])
def test_a_valid_token_is_accepted(secured, kb, keys, alg, endpoint):
    response = call(secured.test_client(), kb, endpoint, keys[alg].sign(claims(ISS, _url(endpoint))))
    assert response.status_code == 200, response.get_data(as_text=True)
    if endpoint == "discovery":
        assert {s["id"] for s in response.get_json()["services"]} >= {"mm-tcell-order-sign"}
    if endpoint == "service":
        assert member_codes(response.get_json()["cards"]) >= {"SEQ-1", "SCR-1", "SCR-3"}


def test_aud_as_an_array_and_from_the_request_url_on_loopback_without_a_public_base(kb, keys):
    app = make_app(kb, host="127.0.0.1", base="", **trusted(keys))
    client = app.test_client()  # the test client calls http://localhost
    token = keys["ES384"].sign(claims(ISS, ["https://other.example.org/x", "http://localhost/cds-services"]))
    assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    token = keys["ES384"].sign(claims(ISS, BASE + "/cds-services"))  # the public URL, but none is configured
    assert_refused(client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}),
                   "is not this endpoint's URL 'http://localhost/cds-services'")


def test_off_loopback_with_issuers_a_public_base_url_is_required_at_startup(kb, keys):
    with pytest.raises(ConfigurationError, match="public_base_url: required when listening on 0.0.0.0"):
        make_app(kb, base="", **trusted(keys))


def test_a_forged_host_never_makes_a_token_for_another_service_acceptable(kb, keys):
    """Issue 10.5: aud was checked against the Host header when public_base_url was unset."""
    other = "https://other-service.example.org"
    forged = {"Host": "other-service.example.org", "X-Forwarded-Proto": "https"}
    loopback = make_app(kb, host="127.0.0.1", base="", **trusted(keys)).test_client()
    token = keys["ES384"].sign(claims(ISS, other + "/cds-services"))
    assert_refused(loopback.get("/cds-services", base_url=other, headers={"Authorization": f"Bearer {token}", **forged}),
                   "is not a loopback name and public_base_url is not set")
    public = make_app(kb, **trusted(keys)).test_client()
    token = keys["ES384"].sign(claims(ISS, other + "/cds-services"))
    assert_refused(public.get("/cds-services", base_url=other, headers={"Authorization": f"Bearer {token}", **forged}),
                   f"is not this endpoint's URL '{BASE}/cds-services'")


def test_public_base_urls_lists_every_url_the_service_is_reached_at(kb, keys):
    settings = {"host": "0.0.0.0", "public_base_urls": [BASE, "https://cds.internal.example.org/mm/"],
                "security": trusted(keys)}
    client = create_app(settings, kb=kb, clock=lambda: NOW).test_client()
    for base in (BASE, "https://cds.internal.example.org/mm"):
        token = keys["ES384"].sign(claims(ISS, base + "/cds-services"))
        assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    token = keys["ES384"].sign(claims(ISS, "https://cds.elsewhere.example.org/cds-services"))
    assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_preflight_and_probe_paths_need_no_token(secured):
    client = secured.test_client()
    preflight = client.options(SIGN, headers={"Origin": "https://sandbox.cds-hooks.org",
                                              "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    # routes of their own, never behind the JWT: answered in full without a token
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
    assert ready.get_json()["knowledge"]["services"] == 3
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.content_type.startswith("text/plain")
    assert "# TYPE " in metrics.get_data(as_text=True)
    assert_refused(client.get("/anything-else"), "a bearer JWT is required")


def test_a_refusal_keeps_cors_headers_so_a_browser_client_can_read_it(secured):
    response = secured.test_client().get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert response.status_code == 401 and response.headers["Access-Control-Allow-Origin"]


# -- jku on a loopback key server ---------------------------------------------------------
class KeyServer:
    """Serves a JWK Set on loopback and records the paths asked for."""

    def __init__(self, jwks: dict):
        self.jwks = jwks
        self.paths: list[str] = []
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        self.paths.append(request.path)
        if request.path != "/keys/jwks.json":
            return Response("not found", status=404)(environ, start_response)
        return Response(json.dumps(self.jwks), content_type="application/json")(environ, start_response)

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture()
def key_server():
    server = KeyServer({"keys": []})
    yield server
    server.close()


def test_jku_on_the_allow_list_is_fetched_cached_and_refetched_for_a_new_kid(kb, key_server):
    first, rotated = KeyPair.make("ES384"), KeyPair.make("RS384")
    key_server.jwks = {"keys": [first.public_jwk()]}
    app = make_app(kb, issuers=[{"iss": ISS, "jku_prefixes": [key_server.base + "/keys/"]}], jwks_refetch_interval=0)
    client = app.test_client()
    jku = key_server.base + "/keys/jwks.json"

    def get(pair: KeyPair):
        token = pair.sign(claims(ISS, BASE + "/cds-services"), jku=jku)
        return client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})

    assert get(first).status_code == 200
    assert get(first).status_code == 200
    assert key_server.paths == ["/keys/jwks.json"]  # cached for jwks_ttl
    key_server.jwks = {"keys": [first.public_jwk(), rotated.public_jwk()]}
    assert get(rotated).status_code == 200  # unknown kid: fetched again once
    assert key_server.paths == ["/keys/jwks.json"] * 2
    assert_refused(get(KeyPair.make("ES384")), "unknown kid")


def test_jku_off_the_allow_list_is_never_fetched(kb, key_server):
    pair = KeyPair.make("ES384")
    key_server.jwks = {"keys": [pair.public_jwk()]}
    app = make_app(kb, issuers=[{"iss": ISS, "jku_prefixes": [key_server.base + "/keys/"]}])
    client = app.test_client()
    for jku in (key_server.base + "/other/jwks.json", key_server.base + "/keys/../other/jwks.json",
                key_server.base.replace("127.0.0.1", "localhost") + "/keys/jwks.json"):
        token = pair.sign(claims(ISS, BASE + "/cds-services"), jku=jku)
        response = client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
    assert key_server.paths == []


def test_jwks_url_of_an_issuer_is_used(kb, key_server):
    pair = KeyPair.make("ES384")
    key_server.jwks = {"keys": [pair.public_jwk()]}
    app = make_app(kb, issuers=[{"iss": ISS, "jwks_url": key_server.base + "/keys/jwks.json"}])
    token = pair.sign(claims(ISS, BASE + "/cds-services"))
    assert app.test_client().get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 200


# -- start-up -----------------------------------------------------------------------------
def test_startup_off_loopback_without_issuers_is_refused(kb, capsys):
    with pytest.raises(ConfigurationError, match="refusing to listen on 0.0.0.0 without a trusted JWT issuer"):
        create_app({"host": "0.0.0.0"}, kb=kb)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "not starting: refusing to listen on 0.0.0.0" in capsys.readouterr().err


def test_startup_off_loopback_with_allow_insecure_runs_unauthenticated_and_says_so(kb, caplog):
    app = make_app(kb, allow_insecure=True)
    assert any(r.levelname == "CRITICAL" and "INSECURE" in r.getMessage() for r in caplog.records)
    client = app.test_client()
    plain = call(client, kb, "service", remote="203.0.113.9")
    assert plain.status_code == 200 and plain.get_json()["cards"]
    # ... but an unauthenticated remote caller never gets the explain trace: the same cards, no trace
    asked = call(client, kb, "service", remote="203.0.113.9", query="?explain=1")
    assert asked.status_code == 200
    assert "extension" not in asked.get_json()
    assert codes(asked.get_json()) == codes(plain.get_json())


def test_calls_without_a_token_are_warned_of_once_an_interval_with_their_count(kb, caplog, monkeypatch):
    """A gateway that strips tokens (allow_insecure) sends every call without one: a warning
    line for each would be the log. The first is logged, then one an interval, counted."""
    from cds_service.web import _auth

    monkeypatch.setattr(_auth, "MISSING_TOKEN_LOG_INTERVAL", 0.5)
    app = make_app(kb, allow_insecure=True)
    client = app.test_client()

    def warnings() -> list:
        return [r for r in caplog.records if getattr(r, "event", None) == "auth_missing_allowed"]

    with caplog.at_level(logging.WARNING, logger="cds_service.web._auth"):
        for _ in range(5):
            assert call(client, kb, "service", remote="203.0.113.9").status_code == 200
        assert [r.count for r in warnings()] == [1]
        time.sleep(0.6)
        assert call(client, kb, "discovery", remote="203.0.113.9").status_code == 200
        assert [r.count for r in warnings()] == [1, 5]  # the 4 held back and this one
        assert warnings()[-1].path == "/cds-services"
    web.state_of(app).feedback.close()


@pytest.mark.parametrize("table, message", [
    ({"algorithms": ["ES384", "HS256"]}, "security.algorithms: HS256 not allowed"),
    ({"algorithms": ["none"]}, "security.algorithms: none not allowed"),
    ({"issuers": [{"iss": ISS}]}, "no keys"),
    ({"issuers": [{"iss": ISS, "jku_prefixes": ["https://ehr.example.org"]}]}, "must include the host's trailing '/'"),
    ({"issuers": [{"iss": ISS, "jwks_url": "http://ehr.example.org/jwks"}]}, "must be an https URL"),
    ({"issuers": [{"iss": ISS, "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "a"}]}}]},
     "not an asymmetric key type"),
    ({"issuers": [{"iss": ISS, "jwks": {"keys": [{**KeyPair.make("ES256", "p").public_jwk(), "d": "x"}]}}]},
     "holds a private key"),
    ({"issuers": [{"iss": ISS, "jwks_file": "no-such-file.json"}]}, "cannot read"),
    ({"leway": 30}, "security.leway: unknown key"),
    ({"allow_insecure": "yes"}, "security.allow_insecure: must be true or false"),
])
def test_a_bad_security_table_stops_startup_naming_the_key(kb, table, message):
    with pytest.raises(ConfigurationError, match="security configuration refused") as refused:
        make_app(kb, host="127.0.0.1", **table)
    assert message in str(refused.value)


def test_a_public_base_url_without_scheme_stops_startup(kb):
    with pytest.raises(ConfigurationError, match="public_base_url: 'cds.example.org' must be an http"):
        make_app(kb, host="127.0.0.1", base="cds.example.org")


def test_the_security_table_loads_from_the_settings_file(tmp_path, keys):
    (tmp_path / "ehr-jwks.json").write_text(json.dumps({"keys": [keys["ES384"].public_jwk()]}))
    (tmp_path / "settings.toml").write_text(f'''
host = "0.0.0.0"
public_base_url = "https://cds.example.org"
[security]
leeway = 30
[[security.issuers]]
iss = "{ISS}"
jwks_file = "ehr-jwks.json"
''')
    loaded = security.load(config.load(environ={"MM_CDS_CONFIG": str(tmp_path / "settings.toml")}))
    assert loaded.require_token and loaded.leeway == 30
    assert loaded.issuers[ISS].keys[0]["kid"] == keys["ES384"].kid


def test_the_sandbox_example_trusts_the_published_sandbox_key():
    settings = config.load(environ={"MM_CDS_CONFIG": str(ROOT / "examples/security/sandbox.toml")})
    loaded = security.load(settings)
    sandbox = loaded.issuers["https://sandbox.cds-hooks.org"]
    [key] = sandbox.keys
    assert (key["kid"], key["crv"], key["alg"]) == ("44823f3d-0b01-4a6c-a80e-b9d3e8a7226f", "P-384", "ES384")
    import jwt

    jwt.PyJWK(key, algorithm="ES384")  # a real point on P-384, not a placeholder
    assert sandbox.jku_prefixes == ("https://sandbox.cds-hooks.org/.well-known/",)
    assert not loaded.require_token  # loopback: calls without a token still work


# -- explain ------------------------------------------------------------------------------
def test_explain_goes_only_to_issuers_the_configuration_names(kb, keys):
    """Issue 10.7: any authenticated caller, and any loopback peer, got the trace."""
    named = make_app(kb, host="127.0.0.1", **trusted(keys, explain=True)).test_client()
    unnamed = make_app(kb, host="127.0.0.1", **trusted(keys)).test_client()
    for client, expected in ((named, True), (unnamed, False)):
        token = keys["ES384"].sign(claims(ISS, _url("service")))
        authed = call(client, kb, "service", token=token, remote="203.0.113.9", query="?explain=1")
        assert authed.status_code == 200 and ("extension" in authed.get_json()) is expected
    # with trusted issuers, a loopback caller without a token is nobody the configuration names
    assert "extension" not in call(named, kb, "service", query="?explain=1").get_json()


def test_explain_on_a_development_loopback_server_but_never_through_a_proxy(kb):
    client = make_app(kb, host="127.0.0.1", base="").test_client()
    assert "extension" in call(client, kb, "service", query="?explain=1").get_json()
    assert "extension" not in call(client, kb, "service", remote="203.0.113.9", query="?explain=1").get_json()
    method, path = ENDPOINTS["service"]
    prefetch = empty_prefetch(kb.services["mm-tcell-order-sign"].discovery(), {"resourceType": "Patient", "id": "p1"})
    for header in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "203.0.113.9"}):
        proxied = client.post(path + "?explain=1", json=order_sign(prefetch=prefetch), headers=header,
                              environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert proxied.status_code == 200 and "extension" not in proxied.get_json(), header


# -- fhirServer allow-list (issue 10.1) ---------------------------------------------------
class Recorder:
    """A loopback HTTP server that answers 404 to everything and records what it was asked."""

    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        self.requests.append((request.full_path, request.headers.get("Authorization")))
        return Response("{}", status=404, content_type="application/fhir+json")(environ, start_response)

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture()
def target():
    server = Recorder()
    yield server
    server.close()


def hook_call(client, token: str | None, server: str, remote: str = "203.0.113.9"):
    body = order_sign()  # no prefetch: everything would be fetched from fhirServer
    body["fhirServer"] = server
    body["fhirAuthorization"] = {"access_token": "ehr-access-token", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "user/*.read", "subject": "mm-cds"}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(SIGN, json=body, headers=headers, environ_base={"REMOTE_ADDR": remote})


def ssrf_targets(target) -> list[str]:
    port = target.base.rsplit(":", 1)[1]
    return [
        f"http://127.0.0.1:{port}/internal/",           # another loopback port (not listed)
        f"http://0.0.0.0:{port}/fhir",                  # every interface
        f"http://2130706433:{port}/fhir",               # 127.0.0.1 as one decimal number
        f"http://localhost:{port}/fhir",                # the same host, another name
        f"{target.base}/fhir/../internal",              # climbs out of the prefix
        f"{target.base}/fhir/%2e%2e/internal",          # the same, percent-encoded
        f"{target.base}/fhir/./x",
        f"http://user:pw@127.0.0.1:{port}/fhir",        # userinfo
        f"{target.base}/fhirevil",                      # a longer name, not a path below
        "file:///etc/passwd",
        "gopher://127.0.0.1:25/",
    ]


def test_an_issuer_may_send_only_its_fhir_servers_and_nothing_else_is_fetched(kb, keys, target):
    app = make_app(kb, **trusted(keys, fhir_servers=[target.base + "/fhir"]))
    client = app.test_client()
    for server in ssrf_targets(target):
        response = call_with(client, keys, server)
        assert response.status_code in (400, 403), (server, response.get_data(as_text=True))
        issue = response.get_json()["issue"][0]
        assert response.get_json()["resourceType"] == "OperationOutcome" and issue["expression"] == ["fhirServer"]
        assert "fhirServer" in issue["diagnostics"]
    assert target.requests == []  # nothing fetched, the caller's access token sent nowhere
    # the listed server and below it: fetched (case and default ports: test_urls_are_normalised)
    for allowed in (target.base + "/fhir", target.base + "/fhir/", target.base + "/fhir/r4"):
        response = call_with(client, keys, allowed)
        assert response.status_code == 412, (allowed, response.get_data(as_text=True))
    assert target.requests and all(path.startswith("/fhir/") for path, _ in target.requests)


def call_with(client, keys, server: str):
    return hook_call(client, keys["ES384"].sign(claims(ISS, _url("service"))), server)


def test_an_issuer_without_fhir_servers_may_name_none_and_a_call_without_a_token_neither(kb, keys, target):
    client = make_app(kb, **trusted(keys)).test_client()
    response = call_with(client, keys, target.base + "/fhir")
    assert response.status_code == 403 and "its fhir_servers" in response.get_json()["issue"][0]["diagnostics"]
    loopback = make_app(kb, host="127.0.0.1", **trusted(keys, fhir_servers=[target.base + "/fhir"])).test_client()
    response = hook_call(loopback, None, target.base + "/fhir", remote="127.0.0.1")
    assert response.status_code == 403 and "without a bearer JWT may not name" in response.get_json()["issue"][0]["diagnostics"]
    assert target.requests == []


def test_the_development_default_is_permissive_and_says_so(kb, target, caplog):
    client = make_app(kb, host="127.0.0.1", base="").test_client()
    assert any(getattr(r, "event", None) == "security_fhir_open" for r in caplog.records)
    response = hook_call(client, None, target.base + "/any/", remote="127.0.0.1")
    assert response.status_code == 412 and target.requests
    # still normalised: dot segments and userinfo are refused even here
    assert hook_call(client, None, target.base + "/a/../b", remote="127.0.0.1").status_code == 400


@pytest.mark.parametrize("url, normal", [
    ("HTTPS://EHR.Example.ORG:443/fhir", "https://ehr.example.org/fhir"),
    ("http://127.0.0.1:80/fhir/", "http://127.0.0.1/fhir/"),
    ("https://ehr.example.org", "https://ehr.example.org/"),
    ("http://[::1]:8080/r4", "http://[::1]:8080/r4"),
])
def test_urls_are_normalised(url, normal):
    assert security.normalise_url(url) == normal


@pytest.mark.parametrize("url", ["https://u@ehr.example.org/", "https://ehr.example.org/a/../b", "https://ehr.example.org/./b",
                                 "https://ehr.example.org/a/%2E%2E/b", "https://ehr.example.org/a%2fb", "ftp://x/",
                                 "https://ehr.example.org\\@evil/", "https:///nohost", "http://ehr.example.org:99999/"])
def test_urls_that_could_be_read_two_ways_are_refused(url):
    with pytest.raises(UnsafeUrl):
        security.normalise_url(url)


def test_fhir_servers_prefixes_are_checked_at_startup(kb):
    with pytest.raises(ConfigurationError, match="fhir_servers: 'https://ehr.example.org' must include"):
        make_app(kb, host="127.0.0.1", issuers=[{"iss": ISS, "jku_prefixes": ["https://ehr.example.org/k/"],
                                                  "fhir_servers": ["https://ehr.example.org"]}])


# -- jku flood (issue 10.6) ---------------------------------------------------------------
def unsigned(kid: str, jku: str, aud: str, **changes) -> str:
    return handmade({"alg": "ES384", "typ": "JWT", "kid": kid, "jku": jku}, claims(ISS, aud, **changes), None)


def test_a_jku_flood_of_unsigned_tokens_causes_at_most_one_download(kb, key_server):
    app = make_app(kb, issuers=[{"iss": ISS, "jku_prefixes": [key_server.base + "/keys/"]}])
    client = app.test_client()
    for i in range(100):
        token = unsigned(f"kid-{i}", f"{key_server.base}/keys/{i}/jwks.json", BASE + "/cds-services")
        assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert len(key_server.paths) <= 1, key_server.paths[:5]


def test_a_token_that_fails_without_the_key_never_downloads(kb, key_server):
    app = make_app(kb, issuers=[{"iss": ISS, "jku_prefixes": [key_server.base + "/keys/"]}], jwks_refetch_interval=0)
    client = app.test_client()
    jku = key_server.base + "/keys/jwks.json"
    now = claims(ISS, "x")["iat"]
    for token, reason in (
        (unsigned("k", jku, "https://elsewhere.example.org/cds-services"), "is not this endpoint's URL"),
        (unsigned("k", jku, BASE + "/cds-services", exp=now - 600), "token expired"),
        (unsigned("k", jku, BASE + "/cds-services", iat=now + 600, exp=now + 900), "issued in the future"),
        (unsigned("k", jku, BASE + "/cds-services", jti=None), "claim 'jti' is required"),
        (unsigned("k", jku, BASE + "/cds-services", exp=now + 86400), "lifetime"),
        (unsigned("k", key_server.base + "/other/jwks.json", BASE + "/cds-services"), "not on the allow-list"),
    ):
        assert_refused(client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}), reason)
    assert key_server.paths == []


def test_a_known_kid_is_used_whatever_jku_names_and_the_key_cache_is_bounded(kb, key_server):
    pair = KeyPair.make("ES384")
    key_server.jwks = {"keys": [pair.public_jwk()]}
    app = make_app(kb, issuers=[{"iss": ISS, "jku_prefixes": [key_server.base + "/keys/"]}], jwks_refetch_interval=0)
    client = app.test_client()
    first = pair.sign(claims(ISS, BASE + "/cds-services"), jku=key_server.base + "/keys/jwks.json")
    assert client.get("/cds-services", headers={"Authorization": f"Bearer {first}"}).status_code == 200
    for i in range(20):  # a known kid: no download, whatever (allowed) jku the token names
        token = pair.sign(claims(ISS, BASE + "/cds-services"), jku=f"{key_server.base}/keys/{i}/jwks.json")
        assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert key_server.paths == ["/keys/jwks.json"]
    key_server.jwks = {"keys": [KeyPair.make("ES256", kid=f"k{i}").public_jwk() for i in range(500)]}
    token = unsigned("absent", key_server.base + "/keys/jwks.json", BASE + "/cds-services")
    client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    keystore = web.state_of(app).security.verifier.keys
    assert keystore.cached_keys(ISS) <= 64


def test_refusals_are_logged_without_the_token(secured, kb, keys, caplog):
    token = keys["ES384"].sign(claims(ISS, "https://wrong.example.org/cds-services"))
    call(secured.test_client(), kb, "discovery", token)
    refused = [r for r in caplog.records if getattr(r, "event", None) == "auth_refused"]
    assert refused and "is not this endpoint's URL" in refused[0].reason
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


def test_security_fhir_servers_are_open_to_every_caller_and_http_is_allowed_there(kb, target):
    """The compose demo: allow_insecure, no issuer, one FHIR server any caller may name."""
    client = make_app(kb, base="", allow_insecure=True, fhir_servers=[target.base + "/fhir"]).test_client()
    assert hook_call(client, None, target.base + "/fhir").status_code == 412 and target.requests
    seen = len(target.requests)
    assert hook_call(client, None, target.base + "/admin").status_code == 403
    assert len(target.requests) == seen
    settings = config.load(environ={"MM_CDS_CONFIG": str(ROOT / "deploy/compose.toml")})
    assert security.load(settings).fhir_servers == ("http://hapi:8080/fhir",)
