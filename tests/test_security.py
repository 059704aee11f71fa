"""CDS Hooks 2.0 client authentication: bearer JWTs on every endpoint, what is refused and
why, the start-up rule off loopback, jku served by a loopback server, explain access."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from cds_service import cli, config, create_app, security, web
from cds_service.errors import ConfigurationError

from .conftest import NOW
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
    settings = {"host": host, "explain_enabled": True, "security": table}
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
    return sorted(c["source"]["topic"]["code"] for c in body["cards"])


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
        assert {c["source"]["topic"]["code"] for c in response.get_json()["cards"]} >= {"SEQ-1", "SCR-1", "SCR-3"}


def test_aud_as_an_array_and_from_the_request_url_without_a_public_base(kb, keys):
    app = make_app(kb, base="", **trusted(keys))
    client = app.test_client()  # the test client calls http://localhost
    token = keys["ES384"].sign(claims(ISS, ["https://other.example.org/x", "http://localhost/cds-services"]))
    assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    token = keys["ES384"].sign(claims(ISS, BASE + "/cds-services"))  # the public URL, but none is configured
    assert_refused(client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}),
                   "is not this endpoint's URL 'http://localhost/cds-services'")


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
def test_explain_needs_authentication_or_a_loopback_caller(kb, keys):
    open_app = make_app(kb, host="127.0.0.1", **trusted(keys))
    client = open_app.test_client()
    local = call(client, kb, "service", query="?explain=1")
    assert local.status_code == 200 and "org.myeloma-cds.explain" in local.get_json()["extension"]
    remote = call(client, kb, "service", remote="203.0.113.9", query="?explain=1")
    assert remote.status_code == 200  # answered, with the same cards, but without the trace
    assert "extension" not in remote.get_json()
    assert codes(remote.get_json()) == codes(local.get_json()) and codes(local.get_json())
    token = keys["ES384"].sign(claims(ISS, _url("service")))
    authed = call(client, kb, "service", token=token, remote="203.0.113.9", query="?explain=1")
    assert authed.status_code == 200 and "org.myeloma-cds.explain" in authed.get_json()["extension"]


def test_refusals_are_logged_without_the_token(secured, kb, keys, caplog):
    token = keys["ES384"].sign(claims(ISS, "https://wrong.example.org/cds-services"))
    call(secured.test_client(), kb, "discovery", token)
    refused = [r for r in caplog.records if getattr(r, "event", None) == "auth_refused"]
    assert refused and "is not this endpoint's URL" in refused[0].reason
    assert token not in caplog.text and token.split(".")[2] not in caplog.text
