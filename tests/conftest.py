"""Fixtures (app, client, knowledge base) and the scenario collector.

tests/scenarios/*.yaml are collected as test items: each scenario runs twice through
the HTTP API, once with prefetch and once fetching from a loopback FHIR server.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cds_service import config, knowledge, scenarios, web
from cds_service.web import create_app

from .support import fuzzing
from .support.harness import Harness, Scenario, card_problems

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
_DATA_DIR = tempfile.mkdtemp(prefix="mm-cds-test-data-")


def pytest_configure(config):
    # Every app the tests build keeps its feedback database here, not in ./data.
    os.environ["MM_CDS_DATA_DIR"] = _DATA_DIR


def pytest_unconfigure(config):
    shutil.rmtree(_DATA_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def kb():
    settings = config.load({})
    return knowledge.load(settings.directories, settings.canonical_base)


@pytest.fixture()
def app(kb):
    app = create_app({"explain_enabled": True, "repeat_suppression": False}, kb=kb, clock=lambda: NOW)
    yield app
    web.state_of(app).feedback.close()


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def loopback_service(kb):
    """start(explain) -> base URL of the service on loopback with a real clock (stopped after)."""
    from contextlib import ExitStack

    from .support.loopback import serving

    with ExitStack() as stack:
        yield lambda explain: stack.enter_context(serving(create_app({"explain_enabled": explain}, kb=kb)))


def pytest_terminal_summary(terminalreporter) -> None:
    """How many requests the fuzz tests sent, and what came back."""
    for line in fuzzing.summary():
        terminalreporter.write_line(line)


# -- scenarios ----------------------------------------------------------------------------
_harness: Harness | None = None


def harness(config) -> Harness:
    global _harness
    if _harness is None:
        _harness = Harness()
        config.add_cleanup(_harness.close)
    return _harness


@pytest.fixture(scope="session")
def live(request) -> Harness:
    """The scenario harness's servers (CDS service with explain, FHIR server), on loopback."""
    return harness(request.config)


def pytest_collect_file(parent, file_path: Path):
    if file_path.suffix == ".yaml" and file_path.parent.name == "scenarios" and not file_path.name.startswith("_"):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self):
        for scenario in scenarios.load_file(self.path):
            for mode in scenario.modes:
                yield ScenarioItem.from_parent(self, name=f"{scenario.name} [{mode}]", scenario=scenario, mode=mode)


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Scenario, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.scenario, self.mode = scenario, mode
        if mode == "fetch":  # the prefetch run stays in `make check`; fetching from the FHIR server is slow
            self.add_marker(pytest.mark.slow)

    def runtest(self) -> None:
        h = harness(self.config)
        response = h.run(self.scenario, self.mode)
        problems = card_problems(self.scenario, response["cards"])
        if self.mode == "fetch" and response["_fetched"] == 0 and self.scenario.chart:
            problems.append("fetch mode made no request to the FHIR server")
        if problems:
            trace = h.run(self.scenario, self.mode, explain=True).get("extension", {})
            raise ScenarioFailure(problems, trace)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ScenarioFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, 0, f"scenario: {self.name}"


class ScenarioFailure(Exception):
    def __init__(self, problems: list[str], trace: dict):
        actions = trace.get("org.myeloma-cds.explain", {}).get("actions", [])
        summary = json.dumps(actions, indent=1)[:6000]
        super().__init__("\n".join(problems) + "\n--- trace (actions) ---\n" + summary)


# -- PostgreSQL ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster started for this test run. In CI it must start: no skipping."""
    from .support.postgres import PostgresCluster, require_binaries

    cluster = PostgresCluster(require_binaries()).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request, tmp_path) -> dict:
    """Settings naming a fresh, empty feedback database of each kind (SQLite, PostgreSQL)."""
    if request.param == "sqlite":
        return {"data_dir": str(tmp_path / "data")}
    return {"database_url": request.getfixturevalue("postgres").new_database()}
