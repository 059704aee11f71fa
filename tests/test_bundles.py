"""Bundled cards (RECOMMENDATIONS-v2 B-0), on the test knowledge in tests/bundles/site: the
bundle CHK (members CHK-1 urgent, CHK-2 with a "Review" prefix when its result is
unreadable, CHK-3 reading a bundle variable) and the plain card PLN-1 (dynamic priority).
What a clinician's EHR receives is asserted: the card count, indicator, summary, detail
lines, suggestions, tags, override reasons, source and the member list in `extension`."""

from __future__ import annotations

import datetime
import json
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from cds_service import cli, create_app, feedback, knowledge, scenarios, web
from cds_service.service import Local, scenario_request

from .conftest import NOW
from .support.harness import card_problems
from .support.requests_ import empty_prefetch, order_sign

HERE = Path(__file__).parent / "bundles"
SITE = HERE / "site"
SCENARIOS = HERE / "bundle-scenarios"
B = "https://myeloma-cds.example.org/fhir"
REC = f"{B}/CodeSystem/test-bundle-recommendations"
KEY = "myeloma-cds.recommendations"


@pytest.fixture(scope="module")
def bkb() -> knowledge.KnowledgeBase:
    return knowledge.load([SITE], B)


def scenario(name: str) -> scenarios.Scenario:
    return scenarios.find(SCENARIOS / "checklist.yaml", name)


def cards_for(kb: knowledge.KnowledgeBase, name: str, explain: bool = False) -> dict:
    [(_, response)] = Local.open(kb).run(scenario(name), explain=explain)
    return response


def by_topic(cards: list[dict]) -> dict[str, dict]:
    return {c["source"]["topic"]["code"]: c for c in cards}


def site_copy(tmp_path: Path, edit) -> knowledge.KnowledgeBase:
    """The test knowledge with its PlanDefinition edited by `edit(plan)`."""
    site = tmp_path / "site"
    shutil.copytree(SITE, site)
    path = site / "PlanDefinition-test-bundle.json"
    plan = json.loads(path.read_text())
    edit(plan)
    path.write_text(json.dumps(plan))
    return knowledge.load([site], B)


# -- the scenario format and harness --------------------------------------------------------

@pytest.mark.parametrize("case", [s.name for s in scenarios.load_file(SCENARIOS / "checklist.yaml")])
def test_bundle_scenarios_pass_in_process_with_the_harness_rules(bkb, case):
    sc = scenario(case)
    [(_, response)] = Local.open(bkb).run(sc)
    assert card_problems(sc, response["cards"]) == []


def test_mm_cds_test_runs_the_bundle_scenarios(capsys):
    assert cli.main(["test", str(SCENARIOS)]) == 0
    assert "6 passed, 0 failed" in capsys.readouterr().out


def test_the_harness_names_what_is_wrong_with_a_bundle(bkb):
    sc = scenario("nothing resulted")
    cards = cards_for(bkb, "nothing resulted")["cards"]
    wrong = replace(sc, expect_cards=3, expect_bundles={"CHK": ["CHK-1"], "XX": ["X-1"]},
                    expect_suggestions={"CHK-3": ["Order test A (CHK-1)"]}, expect_detail={"CHK-3": ["No test A"]})
    problems = card_problems(wrong, cards)
    assert "2 card(s) ['CHK', 'PLN-1'] != expected 3" in problems
    assert "CHK card holds ['CHK-1', 'CHK-2', 'CHK-3'] != expected ['CHK-1']" in problems
    assert "no XX card (expected it to hold ['X-1'])" in problems
    assert "CHK-3 suggestions ['Order test C (CHK-3)'] != ['Order test A (CHK-1)']" in problems
    assert "CHK-3 detail lacks 'No test A'" in problems  # CHK-1's text, not in CHK-3's section
    twice = [dict(cards[0]), dict(cards[1], extension={KEY: ["CHK-1"]})]
    assert any("more than one card for ['CHK-1']" in p for p in card_problems(sc, twice))


def test_the_scenarios_key_is_the_engines():
    assert scenarios.RECOMMENDATIONS_KEY == knowledge.RECOMMENDATIONS_KEY == KEY


# -- rendering ------------------------------------------------------------------------------

def test_a_bundle_is_one_card_listing_its_fired_members(bkb):
    cards = cards_for(bkb, "nothing resulted")["cards"]
    assert len(cards) == 2
    card = by_topic(cards)["CHK"]
    assert card["summary"] == "Before starting: 3 pre-treatment items missing"
    assert card["indicator"] == "warning"  # CHK-1 is urgent, the others routine
    assert card["extension"] == {KEY: ["CHK-1", "CHK-2", "CHK-3"]}
    assert card["source"] == {"label": "Test guideline", "url": "https://doi.org/10.1000/test-bundle",
                              "topic": {"system": REC, "code": "CHK", "display": "Pre-treatment checklist (bundle)"}}
    lines = card["detail"].split("\n")
    assert lines[0] == "Checklist before the first order."
    headers = [line for line in lines if line.startswith("[")]
    assert headers == ["[CHK-1] Test A: no result in 12 months", "[CHK-2] Test B: no result in 12 months",
                       "[CHK-3] Test C: no result in 12 months"]
    assert "Sources: [Source A](https://doi.org/10.1000/source-a)." in lines
    assert lines.index("Sources: [Source A](https://doi.org/10.1000/source-a).") < lines.index(headers[1])


def test_bundle_suggestions_name_their_member_once_per_order(bkb):
    card = by_topic(cards_for(bkb, "nothing resulted")["cards"])["CHK"]
    assert card["selectionBehavior"] == "any"
    # "Order shared test" is asked for by CHK-1 and CHK-2: offered once, for the first.
    assert [s["label"] for s in card["suggestions"]] == [
        "Order test A (CHK-1)", "Order shared test (CHK-1)", "Order test B (CHK-2)", "Order test C (CHK-3)"]
    resources = [s["actions"][0]["resource"] for s in card["suggestions"]]
    assert [r["meta"]["tag"] for r in resources] == [[{"system": REC, "code": c}] for c in ("CHK-1", "CHK-1", "CHK-2", "CHK-3")]
    assert resources[0]["instantiatesCanonical"] == [f"{B}/ActivityDefinition/test-bundle-order-a"]


def test_bundle_override_reasons_are_the_members_and_the_bundles_each_once(bkb):
    card = by_topic(cards_for(bkb, "nothing resulted")["cards"])["CHK"]
    assert [r["code"] for r in card["overrideReasons"]] == ["declined", "done-elsewhere", "not-now"]
    assert all(r["display"] for r in card["overrideReasons"])


def test_a_member_with_a_prefix_is_listed_under_its_heading_after_the_others(bkb, tmp_path):
    def chk2_unreadable_and_chk1_missing(plan):
        plan["action"][0]["action"][2]["condition"] = [{"kind": "applicability", "expression": {
            "language": "text/fhirpath", "expression": "false"}}]

    kb = site_copy(tmp_path, chk2_unreadable_and_chk1_missing)
    sc = scenario("unreadable test B")
    sc = replace(sc, chart=[r for r in sc.chart if r.get("code", {}).get("coding", [{}])[0].get("code") != "T-A"])
    [(_, response)] = Local.open(kb).run(sc)
    card = by_topic(response["cards"])["CHK"]
    assert card["extension"] == {KEY: ["CHK-1", "CHK-2"]}
    lines = [line for line in card["detail"].split("\n") if line]
    review = lines.index("**Review**")
    assert lines.index("[CHK-1] Test A: no result in 12 months") < review
    assert lines[review + 1] == "[CHK-2] Test B: result present but not interpretable by this service: review"
    assert lines[review + 2] == "Test B of 2026-05-01 has no value this service can read."
    assert [s["label"] for s in card["suggestions"]] == ["Order test A (CHK-1)", "Order shared test (CHK-1)"]
    assert card["summary"] == "Before starting: 2 pre-treatment items missing"


def test_a_bundle_without_documentation_takes_its_first_fired_members(tmp_path):
    kb = site_copy(tmp_path, lambda plan: plan["action"][0].pop("documentation"))
    card = by_topic(cards_for(kb, "nothing resulted")["cards"])["CHK"]
    assert card["source"]["label"] == "Source A" and card["source"]["topic"]["code"] == "CHK"


def test_an_info_only_bundle_is_info(bkb):
    card = by_topic(cards_for(bkb, "only test C missing")["cards"])["CHK"]
    assert card["indicator"] == "info" and card["summary"] == "Before starting: 1 pre-treatment item missing"


def test_a_plain_card_lists_its_one_code_and_can_lower_its_priority(bkb):
    missing = by_topic(cards_for(bkb, "nothing resulted")["cards"])["PLN-1"]
    assert missing["extension"] == {KEY: ["PLN-1"]}
    assert (missing["indicator"], missing["summary"]) == ("warning", "Test D: no result in 12 months")
    unreadable = by_topic(cards_for(bkb, "unreadable test D")["cards"])["PLN-1"]
    assert (unreadable["indicator"], unreadable["summary"]) == ("info", "Test D: result could not be interpreted")


def test_a_priority_that_is_not_a_priority_is_traced_and_ignored(tmp_path):
    def bogus(plan):
        plan["action"][1]["dynamicValue"][0]["expression"]["expression"] = "'soon'"

    kb = site_copy(tmp_path, bogus)
    response = cards_for(kb, "unreadable test D", explain=True)
    assert by_topic(response["cards"])["PLN-1"]["indicator"] == "warning"
    [action] = [a for a in response["extension"]["org.myeloma-cds.explain"]["actions"] if a["code"] == "PLN-1"]
    assert any("priority 'soon' is not one of" in (c.get("error") or "") for c in action["conditions"])


def test_shipped_cards_list_their_code_in_the_extension(client, kb):
    prefetch = empty_prefetch(kb.services["mm-tcell-order-sign"].discovery(), {"resourceType": "Patient", "id": "p1"})
    cards = client.post("/cds-services/mm-tcell-order-sign", json=order_sign(prefetch=prefetch)).get_json()["cards"]
    plain = [c for c in cards if c["source"]["topic"]["code"] == "SEQ-1"]
    assert plain and all(c["extension"] == {KEY: ["SEQ-1"]} for c in plain)  # an unbundled card lists its one code
    bundled = {c["source"]["topic"]["code"]: c["extension"][KEY] for c in cards if c not in plain}
    assert bundled == {"SCR": ["SCR-1", "SCR-2", "SCR-3", "SCR-4"], "INF-SC": ["INF-1", "INF-2"], "ADM-SU": ["ADM-1", "ADM-5", "TOX-3"]}  # issue 13: ADM-5 and TOX-3 join ADM-SU


# -- the trace --------------------------------------------------------------------------------

def test_the_trace_lists_every_member_fired_or_not(bkb, capsys):
    trace = cards_for(bkb, "only test C missing", explain=True)["extension"]["org.myeloma-cds.explain"]
    [chk] = [a for a in trace["actions"] if a["code"] == "CHK"]
    assert [(m["code"], m["fired"]) for m in chk["members"]] == [("CHK-1", False), ("CHK-2", False), ("CHK-3", True)]
    assert chk["members"][0]["conditions"][0]["description"] == "no test A in 12 months"
    idle = cards_for(bkb, "no order drafted", explain=True)["extension"]["org.myeloma-cds.explain"]
    [chk] = [a for a in idle["actions"] if a["code"] == "CHK"]
    assert not chk["fired"] and all("not evaluated" in m["note"] for m in chk["members"])
    assert cli.main(["explain", str(SCENARIOS / "checklist.yaml"), "only test C missing"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["member", "not", "fired", "CHK-1"] in lines and ["member", "FIRED", "CHK-3"] in lines


# -- the catalogue ------------------------------------------------------------------------------

def test_the_catalogue_shows_a_bundle_with_its_members(bkb):
    rows = [(e.label, e.bundle) for e in knowledge.entries(bkb)]
    assert rows == [("CHK (bundle)", None), ("CHK-1 (in CHK)", "CHK"), ("CHK-2 (in CHK)", "CHK"),
                    ("CHK-3 (in CHK)", "CHK"), ("PLN-1", None)]
    assert knowledge.counts(bkb) == (4, 5)  # the bundle's topic is not a recommendation
    markdown = knowledge.catalogue_markdown(bkb)
    assert "| CHK (bundle) | order-sign | Before starting: pre-treatment items missing | highest fired member's |" in markdown
    assert "at least one member fires: CHK-1, CHK-2, CHK-3" in markdown
    assert "Bundled cards (one card listing the members that fired): CHK (order-sign): CHK-1, CHK-2, CHK-3." in markdown


# -- feedback per member (SQLite and PostgreSQL) ------------------------------------------------

@pytest.fixture()
def bundle_app(bkb):
    made = []

    def make(settings: dict):
        app = create_app({**settings}, kb=bkb, clock=lambda: NOW)
        made.append(app)
        return app

    yield make
    for app in made:
        web.state_of(app).feedback.close()


def call(client, bkb, name: str = "nothing resulted") -> dict[str, dict]:
    service = bkb.services["test-bundle"]
    body = scenario_request(scenario(name), service.prefetch)
    response = client.post("/cds-services/test-bundle", json=body)
    assert response.status_code == 200
    return by_topic(response.get_json()["cards"])


def report_of(app) -> dict[str, tuple[int, int, int]]:
    reports = feedback.build_report(web.state_of(app).feedback.db)
    return {r.code: (r.shown, r.accepted, r.overridden) for r in reports}


REASON = {"system": f"{B}/CodeSystem/test-bundle-override-reasons", "code": "not-now", "display": "Not now"}


def post(client, *items):
    response = client.post("/cds-services/test-bundle/feedback", json={"feedback": list(items)})
    assert response.status_code == 200, response.get_json()


def test_feedback_on_a_bundle_counts_per_member(backend, bundle_app, bkb):
    app = bundle_app(backend)
    client = app.test_client()
    first, second = call(client, bkb), call(client, bkb)
    picked = [s for s in first["CHK"]["suggestions"] if s["label"] in ("Order test A (CHK-1)", "Order test C (CHK-3)")]
    post(client, {"card": first["CHK"]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-06-15T12:01:00Z",
                  "acceptedSuggestions": [{"id": s["uuid"]} for s in picked]},
         {"card": second["CHK"]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T12:02:00Z",
          "overrideReason": {"reason": REASON}},
         {"card": first["PLN-1"]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T12:03:00Z"})
    assert report_of(app) == {"CHK-1": (2, 1, 1), "CHK-2": (2, 0, 1), "CHK-3": (2, 1, 1), "PLN-1": (2, 0, 1)}
    reports = {r.code: r for r in feedback.build_report(web.state_of(app).feedback.db)}
    assert [(r.code, r.count) for r in reports["CHK-2"].reasons] == [("not-now", 1)]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'code="CHK-1"' in metrics and 'code="CHK"' not in metrics


# The schema as the code before bundles created it (schema versions 1 and 2), verbatim.
OLD_SCHEMA = (
    """CREATE TABLE issued_cards (
        card_uuid      TEXT PRIMARY KEY,
        service_id     TEXT NOT NULL,
        hook_instance  TEXT NOT NULL,
        code           TEXT NOT NULL,
        plan_url       TEXT NOT NULL,
        plan_version   TEXT,
        suggestions    TEXT NOT NULL,
        issued_at      TEXT NOT NULL)""",
    "CREATE INDEX issued_cards_code ON issued_cards (code)",
    """CREATE TABLE feedback (
        idempotency_key       TEXT PRIMARY KEY,
        service_id            TEXT NOT NULL,
        card_uuid             TEXT NOT NULL,
        outcome               TEXT NOT NULL CHECK (outcome IN ('accepted', 'overridden')),
        outcome_timestamp     TEXT NOT NULL,
        accepted_suggestions  TEXT NOT NULL,
        override_system       TEXT,
        override_code         TEXT,
        override_display      TEXT,
        user_comment          TEXT,
        received_at           TEXT NOT NULL)""",
    "CREATE INDEX feedback_card ON feedback (card_uuid)",
    """CREATE VIEW feedback_linked AS
        SELECT f.*, c.code, c.plan_url, c.plan_version, c.hook_instance, c.service_id AS issued_by,
               c.issued_at, CASE WHEN c.card_uuid IS NULL THEN 0 ELSE 1 END AS linked
        FROM feedback f LEFT JOIN issued_cards c ON c.card_uuid = f.card_uuid""",
    "CREATE INDEX issued_cards_issued_at ON issued_cards (issued_at)",
)


def test_a_database_of_the_previous_schema_is_migrated_without_losing_rows(backend, bundle_app, bkb):
    db = feedback.open_database(backend.get("database_url", ""), backend.get("data_dir", ""))
    old_card, old_suggestion = str(uuid.uuid4()), str(uuid.uuid4())
    conn = db.connect()
    with db.transaction(conn) as cur:
        for statement in OLD_SCHEMA:
            cur.execute(statement)
        cur.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        cur.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (1, '2026-01-01'), (2, '2026-01-01')")
        cur.execute(db.sql("INSERT INTO issued_cards VALUES (?, 'test-bundle', 'h-old', 'PLN-1', 'u', '1', ?, ?)"),
                    (old_card, json.dumps([old_suggestion]), "2026-06-01T00:00:00.000000Z"))
        cur.execute(db.sql("INSERT INTO feedback VALUES ('k-old', 'test-bundle', ?, 'accepted', '2026-06-01T00:01:00Z',"
                           " ?, NULL, NULL, NULL, NULL, '2026-06-01T00:01:01Z')"), (old_card, json.dumps([old_suggestion])))
    conn.close()

    app = bundle_app(backend)  # the new code migrates the database at start-up
    writer = web.state_of(app).feedback
    conn = writer.db.connect()
    try:
        versions = [r["version"] for r in feedback.query(writer.db, conn, "SELECT version FROM schema_migrations ORDER BY version")]
        cards = feedback.query(writer.db, conn, "SELECT card_uuid, code, suggestions FROM issued_cards")
        rows = feedback.query(writer.db, conn, "SELECT idempotency_key, card_uuid, outcome FROM feedback")
    finally:
        conn.close()
    assert versions == list(range(1, feedback.SCHEMA_VERSION + 1))
    assert cards == [{"card_uuid": old_card, "code": "PLN-1", "suggestions": json.dumps([old_suggestion])}]
    assert rows == [{"idempotency_key": "k-old", "card_uuid": old_card, "outcome": "accepted"}]
    assert report_of(app) == {"PLN-1": (1, 1, 0)}  # the old card reports its one code

    client = app.test_client()
    new = call(client, bkb)
    post(client, {"card": new["CHK"]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T12:02:00Z"})
    assert report_of(app) == {"PLN-1": (2, 1, 0), "CHK-1": (1, 0, 1), "CHK-2": (1, 0, 1), "CHK-3": (1, 0, 1)}


def test_retention_deletes_a_cards_member_and_suggestion_rows_with_it(tmp_path):
    db = feedback.open_database("", str(tmp_path))
    writer = feedback.Writer(db, issued_card_days=1).start()
    old = "2020-01-01T00:00:00.000000Z"
    fresh = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rows = [feedback.CardRow(card_uuid=f"c-{i}", service_id="test-bundle", hook_instance="h", code="CHK", plan_url="u",
                             plan_version=None, suggestions=(f"s-{i}",), issued_at=old if i < 1500 else fresh,
                             members=("CHK-1", "CHK-2"), suggestion_members=((f"s-{i}", "CHK-1"),)) for i in range(1510)]
    writer.record_cards(rows)
    assert writer.flush()
    conn = db.connect()
    try:
        counts = {t: feedback.query(db, conn, f"SELECT COUNT(*) AS n FROM {t}")[0]["n"]
                  for t in ("issued_cards", "issued_card_members", "issued_suggestions")}
    finally:
        conn.close()
    writer.close()
    assert counts == {"issued_cards": 10, "issued_card_members": 20, "issued_suggestions": 10}


def test_apply_answers_a_bundle_as_one_action_with_its_members_suggestions(bkb):
    sc = scenario("nothing resulted")

    def bundle(resources):
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}

    body = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": "Patient/p1"},
        {"name": "practitioner", "valueReference": {"reference": "Practitioner/dr-1"}},
        {"name": "hook", "valueCode": "order-sign"},
        {"name": "data", "resource": bundle(sc.chart)}, {"name": "draftOrders", "resource": bundle(sc.draft_orders)}]}
    app = create_app({}, kb=bkb, clock=lambda: NOW)
    try:
        response = app.test_client().post("/fhir/PlanDefinition/test-bundle/$apply", json=body)
    finally:
        web.state_of(app).feedback.close()
    assert response.status_code == 200, response.get_json()
    care_plan = response.get_json()
    [group] = [r for r in care_plan["contained"] if r["resourceType"] == "RequestGroup"]
    actions = {a["code"][0]["coding"][0]["code"]: a for a in group["action"]}
    assert set(actions) == {"CHK", "PLN-1"}
    assert [n["title"] for n in actions["CHK"]["action"]] == [
        "Order test A (CHK-1)", "Order shared test (CHK-1)", "Order test B (CHK-2)", "Order test C (CHK-3)"]
    assert actions["CHK"]["title"] == "Before starting: 3 pre-treatment items missing"
