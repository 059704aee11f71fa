"""Fixtures (app, client, knowledge base), the scenario collector, and the order of the run.

tests/scenarios/*.yaml are collected as test items: each scenario runs twice through
the HTTP API, once with prefetch and once fetching from a loopback FHIR server.

`make test` runs the suite on one worker per core (pytest-xdist, `-n auto --dist loadfile`:
a file's tests stay together on one worker, so module fixtures start once; docs/testing.md).
Every worker is its own process with its own session fixtures (knowledge base, scenario
harness, PostgreSQL cluster), data directory and loopback ports (tests/support/ports.py);
nothing is written into the checkout.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from cds_service import config, knowledge, scenarios, web
from cds_service.data import _http
from cds_service.web import create_app

from .support import fuzzing
from .support.harness import Harness, Scenario, card_problems

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
_DATA_DIR = tempfile.mkdtemp(prefix="mm-cds-test-data-")


def pytest_configure(config):
    # Every app the tests build keeps its feedback database here, not in ./data.
    os.environ["MM_CDS_DATA_DIR"] = _DATA_DIR
    if not hasattr(config, "workerinput") and (config.getoption("numprocesses", None) or 0) > 0:
        # The controller of several workers: a folder for their machine lock (alone, below),
        # named to the workers it starts after this.
        os.environ[_LOCKS] = tempfile.mkdtemp(prefix="mm-cds-test-locks-")


def pytest_unconfigure(config):
    shutil.rmtree(_DATA_DIR, ignore_errors=True)
    if not hasattr(config, "workerinput") and _LOCKS in os.environ:
        shutil.rmtree(os.environ.pop(_LOCKS), ignore_errors=True)


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
def no_proxy_env(monkeypatch):
    """No proxy in the environment, and the transport's per-origin proxy look-up forgotten
    before and after (it is read once per origin): GETs go direct to loopback servers."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    _http._proxy_for.cache_clear()
    yield monkeypatch
    _http._proxy_for.cache_clear()


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
    """How many requests the fuzz tests sent, and what came back (on every worker); how
    long the tests waited for one another (several workers: `alone`, below)."""
    for line in fuzzing.summary():
        terminalreporter.write_line(line)
    if _WAITED["alone"]:
        terminalreporter.write_line(
            f"alone: {len(_WAITED['alone'])} tests ran with the machine to themselves, after waiting "
            f"{sum(_WAITED['alone']):.1f} s for the tests running then; the other tests waited {sum(_WAITED['shared']):.1f} s")


# -- several workers (pytest-xdist) -------------------------------------------------------
# The slowest files first, so that on two workers no long file starts last and runs alone
# at the end (the short files fill in after them); the rest keep their usual order.
# test_fuzz.py first of all: Hypothesis and schemathesis draw values from the literals of
# the modules already imported, so it is the first file its worker runs (in one process
# too): the fuzzers explore the same examples on every run, whatever the other worker does.
RUN_FIRST = (
    "test_fuzz.py",
    "test_replicas.py",
    "test_nginx_front.py",
    "test_medication_references.py",
    "test_deploy.py",
    "test_feedback_outage.py",
    "test_production_server.py",
    "test_packaging.py",
    "test_fhirpath_speedups.py",
    "test_reload.py",
    "test_replay.py",
    "test_kubernetes.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable: files stay whole


# A test marked `alone` runs while no other test does: it holds a deadline with all of its
# work in this one process (the service, its threads and a loopback FHIR server), which a
# second worker's load on the other core would push past. A readers-writer lock over the
# workers: every test holds the machine shared, an `alone` test holds it exclusive (from
# its setup to its teardown), and takes the gate first, so that while it waits no other
# test starts. Without several workers there is nothing to wait for.
_LOCKS = "MM_CDS_TEST_SUITE_LOCKS"  # not a setting: config.load reads only the names it knows
_WAITED: dict[str, list[float]] = {"alone": [], "shared": []}  # seconds each test waited for the lock


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    folder = os.environ.get(_LOCKS) if hasattr(item.config, "workerinput") else None
    if folder is None:
        yield
        return
    alone = item.get_closest_marker("alone") is not None
    with open(Path(folder) / "gate", "a") as gate, open(Path(folder) / "machine", "a") as machine:
        asked = time.monotonic()
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(machine, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        _WAITED["alone" if alone else "shared"].append(time.monotonic() - asked)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


def pytest_sessionfinish(session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a worker: its fuzz tally and lock waits go to the controller
        workeroutput["fuzz_tally"] = [[*key, count] for key, count in fuzzing.TALLY.items()]
        workeroutput["waited"] = _WAITED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """The controller adds up what each worker's fuzz tests sent and how long its tests
    waited for the machine (both printed at the end)."""
    output = getattr(node, "workeroutput", {})
    for *key, count in output.get("fuzz_tally", []):
        fuzzing.TALLY[tuple(key)] += count
    for kind, waits in output.get("waited", {}).items():
        _WAITED[kind] += waits


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


@pytest.fixture(scope="session")
def live_in_process(request) -> Harness:
    """The same harness, but the service reads the FHIR server's app in process (no socket)."""
    h = Harness(in_process=True)
    request.config.add_cleanup(h.close)
    return h


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
            self.add_marker(pytest.mark.native)  # the compiled fetch layer reads the server's answers

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
