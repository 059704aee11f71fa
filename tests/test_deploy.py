"""docker-compose.yml and the Dockerfile, without a Docker engine: the compose file's
structure (nginx in front of two replicas sharing PostgreSQL) and its nginx files under
`nginx -t`, the Dockerfile's two stages (build the wheel, install and start it) run with a
fresh virtual environment, and the patient loader's output used the way the compose stack
uses it. Nothing here reaches the package index (see the Dockerfile test's shortcuts).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from fhir.resources.R4B.bundle import Bundle
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from cds_service import _native, cli, create_app, scenarios, web
from cds_service.config import Settings

from .support.fhir_server import FhirServer, FhirStore, InProcess
from .support.loopback import first_answer
from .support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


REPLICAS = ("mm-cds-a", "mm-cds-b")


def test_compose_file_runs_nginx_in_front_of_two_replicas_sharing_postgresql():
    services = compose()["services"]
    assert set(services) == {"nginx", *REPLICAS, "postgres", "hapi", "loader"}
    replicas = [services[name] for name in REPLICAS]
    # One image, one configuration: the replicas differ only in name.
    assert replicas[0] == replicas[1]
    service = replicas[0]
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    config = service["environment"]["MM_CDS_CONFIG"]
    assert (ROOT / Path(config).relative_to("/app")).is_file()
    # Only the front publishes the service; the replicas and the database are internal
    # (HAPI is the tester's FHIR server, published for the browser).
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"nginx": ["8080:8080"], "hapi": ["8081:8080"]}
    # Each replica is healthy when /ready answers 200 (knowledge loaded), not merely alive.
    assert "urlopen('http://127.0.0.1:8080/ready'" in " ".join(service["healthcheck"]["test"])  # no JWT needed
    assert int(service["stop_grace_period"].rstrip("s")) > 30  # graceful_timeout: in-flight calls finish
    # The replicas share one PostgreSQL: the URL names the compose service, its user and database.
    url = urlsplit(service["environment"]["MM_CDS_DATABASE_URL"])
    postgres = services["postgres"]
    assert url.scheme == "postgresql" and (url.hostname, url.port or 5432) == ("postgres", 5432)
    assert (url.username, url.password, url.path.lstrip("/")) == (
        postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_PASSWORD"], postgres["environment"]["POSTGRES_DB"])
    assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert re.fullmatch(r"postgres:\d+\.\d+", postgres["image"]), "pin a PostgreSQL release"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert any(v.split(":")[1] == "/var/lib/postgresql/data" for v in postgres["volumes"])
    nginx = services["nginx"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+(-\w+)?", nginx["image"]), "pin an nginx release"
    assert nginx["depends_on"] == {name: {"condition": "service_healthy"} for name in REPLICAS}
    assert "http://127.0.0.1:8080/ready" in nginx["healthcheck"]["test"]  # through nginx to a replica
    mounts = {target.removesuffix(":ro"): ROOT / source for source, target in (v.split(":", 1) for v in nginx["volumes"])}
    config_dir = nginx["command"][nginx["command"].index("-c") + 1].rsplit("/", 1)[0]
    assert mounts[f"{config_dir}/mm-cds.conf"] == ROOT / "deploy" / "nginx" / "mm-cds.conf"  # the shared server block
    for target, source in mounts.items():
        assert target.startswith(config_dir + "/") and source.is_file(), target
    upstream = mounts[f"{config_dir}/upstream.conf"].read_text()
    servers = re.findall(r"^\s*server\s+([^\s;]+)", re.search(r"upstream\s+mm_cds\s*\{(.*?)\}", upstream, re.S).group(1), re.M)
    port = dict(pair.split("=", 1) for op, args in dockerfile() if op == "ENV" for pair in shlex.split(args))["MM_CDS_PORT"]
    assert servers == [f"{name}:{port}" for name in REPLICAS]
    listen = re.findall(r"^\s*listen\s+(\d+)", mounts[f"{config_dir}/mm-cds-listen.conf"].read_text(), re.M)
    assert [f"{p}:{p}" for p in listen] == nginx["ports"]
    hapi = services["hapi"]
    assert re.fullmatch(r"hapiproject/hapi:v\d+\.\d+\.\d+(-\d+)?", hapi["image"]), "pin a HAPI release tag"
    assert hapi["environment"]["hapi.fhir.fhir_version"] == "R4"
    loader = services["loader"]
    assert loader["image"] == service["image"] and loader["restart"] == "no"
    assert loader["depends_on"] == {"mm-cds-a": {"condition": "service_healthy"}, "hapi": {"condition": "service_started"}}
    command = loader["command"]
    assert command[:2] == ["mm-cds", "export-patients"]
    assert command[command.index("--post") + 1] == "http://hapi:8080/fhir"  # HAPI's compose name and port
    assert command[2].startswith("--")  # no folder: the scenarios the installed package ships (no tests/ in the image)
    assert any(v.endswith(":" + command[command.index("--out") + 1]) for v in loader["volumes"])
    copied = [source for op, args in dockerfile() if op == "COPY" and not args.startswith("--from=")
              for source in args.split()[:-1]]
    assert all((ROOT / source).exists() for source in copied)
    assert "deploy" in copied and "tests/scenarios" in copied  # the build stage bundles the scenarios


@pytest.mark.slow
def test_the_compose_nginx_configuration_passes_nginx_t(tmp_path):
    """The files the compose nginx mounts, checked by the real nginx (Debian's). No compose
    DNS here: the replicas' names become loopback addresses, nothing else changes."""
    nginx = compose()["services"]["nginx"]
    config_dir = nginx["command"][nginx["command"].index("-c") + 1].rsplit("/", 1)[0]
    for volume in nginx["volumes"]:
        source, target = volume.split(":")[:2]
        text = (ROOT / source).read_text()
        for name in REPLICAS:
            text = text.replace(f"server {name}:", "server 127.0.0.1:")
        (tmp_path / target.removeprefix(config_dir + "/")).write_text(text.replace("/tmp/", f"{tmp_path}/"))
    check = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-t", "-c", str(tmp_path / "nginx.conf"),
                            "-p", str(tmp_path), "-g", "error_log stderr notice;"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "test is successful" in check.stderr, check.stderr


def _stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, its steps) in order; an unnamed stage is called by its position."""
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for op, args in dockerfile():
        if op == "FROM":
            parts = args.split()
            stages.append((parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages)), []))
        stages[-1][1].append((op, args))
    return stages


def _wait_stopped(process: subprocess.Popen) -> None:
    """SIGTERM, then up to twice gunicorn's graceful timeout (a loaded machine is slow), then SIGKILL."""
    process.terminate()
    try:
        process.wait(timeout=2 * Settings().graceful_timeout + 15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.slow
def test_dockerfile_builds_the_wheel_and_runs_it_unprivileged_in_a_fresh_venv(tmp_path):
    """Each stage's filesystem is a folder under tmp (its absolute paths mapped there); the
    build stage's `pip` is this project's (the build backend), the runtime stage's a fresh
    venv's. The shortcuts, said plainly: `pip wheel` runs with --no-build-isolation and every
    `pip install` with --no-deps (the fresh venv sees this project's installed dependencies
    through a .pth line), so nothing is fetched from the package index; the build stage's
    apt-get (the C compiler that mypyc needs) is not run, the compiler found here instead.
    The build stage compiles the modules of cds_service/_native.py, and the installed wheel
    must import them compiled."""
    stages = _stages()
    assert [name for name, _ in stages] == ["build", "1"], "a build stage, then the runtime stage"
    (_, build), (_, runtime) = stages
    assert build[0] == ("FROM", "python:3.11-slim AS build") and runtime[0] == ("FROM", "python:3.11-slim")
    roots = {"build": tmp_path / "build-root", "1": tmp_path / "runtime-root"}

    def local(stage: str, text: str) -> str:  # absolute paths of a stage, inside its folder
        return re.sub(r"(?<![\w.])/(?=[a-z])", str(roots[stage]) + "/", text)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MM_CDS_")}
    base_env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pythons = {"build": Path(sys.executable).parent, "1": venv / "bin"}
    env: dict[str, str] = {}
    for stage, steps in stages:
        env = {**base_env, "PATH": f"{pythons[stage]}{os.pathsep}{base_env['PATH']}"}
        workdir = roots[stage]
        for op, args in steps:
            if op == "WORKDIR":
                image_workdir = args
                workdir = Path(local(stage, args))
                workdir.mkdir(parents=True, exist_ok=True)
            elif op == "COPY":
                *sources, target = args.split()
                origin = ROOT
                if sources[0].startswith("--from="):
                    origin = roots[sources.pop(0).split("=", 1)[1]]
                    sources = [s.lstrip("/") for s in sources]
                destination = workdir / target
                for source in sources:
                    assert (origin / source).exists(), f"COPY {source}: no such file"
                    if (origin / source).is_dir():
                        # what .dockerignore leaves out of the build context
                        shutil.copytree(origin / source, destination, dirs_exist_ok=True,
                                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so",
                                                                      "_native_build.json"))
                    else:
                        destination.mkdir(parents=True, exist_ok=True)
                        shutil.copy(origin / source, destination)
            elif op == "RUN":
                command = local(stage, args)
                if args.startswith("pip wheel "):
                    command += " --no-build-isolation --no-index --quiet"  # the shortcut (docstring)
                elif args.startswith("pip install "):
                    command += " --no-deps --no-index --quiet"  # the shortcut (docstring)
                elif args.startswith("apt-get "):  # the build stage's C compiler (the docstring)
                    assert stage == "build" and re.search(r"apt-get install .*\bgcc\b", args), args
                    assert shutil.which("gcc"), "this machine has no C compiler to stand in for the image's"
                    continue
                else:  # the data directory, owned by the unprivileged user
                    assert re.fullmatch(r"mkdir -p (\S+) && chown 10001:10001 \1", args), args
                    Path(local(stage, args.split()[2])).mkdir(parents=True, exist_ok=True)
                    continue
                subprocess.run(["sh", "-c", command], cwd=workdir, env=env, check=True, timeout=300)
            elif op == "ENV":
                env.update({k: local(stage, v) for k, v in (p.split("=", 1) for p in shlex.split(args))})
    ops = [op for op, _ in runtime]
    assert ("USER", "10001") in runtime and ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")
    assert not any("-e" in shlex.split(args) for op, args in runtime if op == "RUN"), "the wheel, not -e"
    data_dir = env["MM_CDS_DATA_DIR"]
    assert ("VOLUME", json.dumps([data_dir.replace(str(roots["1"]), "")])) in runtime  # writable when read-only
    app = roots["1"] / image_workdir.lstrip("/")
    assert not (app / "cds_service").exists() and not (app / "plandefinitions").exists()  # the wheel serves
    environment = dict(compose()["services"]["mm-cds-a"]["environment"])
    # No PostgreSQL here: the replica's shared database is left out (feedback in SQLite).
    assert environment.pop("MM_CDS_DATABASE_URL").startswith("postgresql://")
    env.update({k: str(v).replace(image_workdir, str(app)) for k, v in environment.items()})
    port = free_port()
    env["MM_CDS_PORT"] = str(port)
    cmd = json.loads(next(args for op, args in runtime if op == "CMD"))
    assert "--prod" in cmd  # the image runs the production server (gunicorn)
    assert shutil.which(cmd[0], path=str(venv / "bin")), f"{cmd[0]} is not installed in the venv"
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen([str(venv / "bin" / cmd[0]), *cmd[1:]], cwd=app, env=env, stdout=log, stderr=log)
    try:
        response = first_answer(f"http://127.0.0.1:{port}/cds-services", process, tmp_path / "serve.log")
        assert response.status_code == 200
        assert {s["id"] for s in response.json()["services"]} == {"mm-tcell-order-select", "mm-tcell-order-sign", "mm-tcell-chart"}
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json() == {"status": "ok"}
        assert requests.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200  # compose's healthcheck
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "Try it" in page.text
        assert requests.get(f"http://127.0.0.1:{port}/ui/scenarios", timeout=10).json()  # the bundled scenarios
    finally:
        _wait_stopped(process)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "allow_insecure" in text  # the insecure demo setting is loud at start-up
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", "import cds_service; print(cds_service.__file__)"],
                              capture_output=True, text=True, env=env, check=True, cwd=tmp_path).stdout
    assert Path(imported.strip()).is_relative_to(site), imported  # the installed wheel, not a source tree
    native = subprocess.run([str(venv / "bin" / "python"), "-c", "from cds_service import _native; print(*_native.check())"],
                            capture_output=True, text=True, env=env, check=True, cwd=tmp_path).stdout.split()
    assert tuple(native) == _native.MODULES  # the image runs the compiled build, and its record matches


class TransactionServer:
    """Just enough of a FHIR server for the loader: /metadata, and transactions POSTed to the base."""

    def __init__(self) -> None:
        self.store = FhirStore()
        self.posted: list[dict] = []
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.base = f"http://127.0.0.1:{self._server.server_port}/fhir"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        if request.method == "GET" and request.path == "/fhir/metadata":
            response = Response(json.dumps({"resourceType": "CapabilityStatement"}), content_type="application/fhir+json")
        elif request.method == "POST" and request.path == "/fhir":
            bundle = json.loads(request.get_data())
            Bundle.model_validate(bundle)  # what HAPI would refuse, refused here too
            assert bundle["type"] == "transaction"
            self.posted.append(bundle)
            self.store.resources.extend(e["resource"] for e in bundle["entry"])
            response = Response(json.dumps({"resourceType": "Bundle", "type": "transaction-response"}),
                                content_type="application/fhir+json")
        else:
            response = Response("{}", status=404)
        return response(environ, start_response)

    def close(self) -> None:
        self._server.shutdown()


@pytest.mark.slow
def test_the_loader_posts_every_scenario_patient_and_the_service_fetches_them(tmp_path, kb, capsys):
    """`mm-cds export-patients --post` as the compose loader runs it, then the example requests
    sent to the service with fhirServer pointing at the loaded server: the expected cards."""
    target = TransactionServer()
    folder = scenarios.DEFAULT_FOLDER
    try:
        code = cli.main(["export-patients", str(folder), "--post", target.base, "--wait", "10",
                         "--out", str(tmp_path / "patients"), "--fhir-server", target.base])
    finally:
        target.close()
    out = capsys.readouterr().out
    total = len(scenarios.load_all([folder]))
    assert code == 0 and f"{total} patients loaded into {target.base}, 0 failed" in out
    assert len(target.posted) == total
    ids = [r["id"] for b in target.posted for r in (e["resource"] for e in b["entry"])]
    assert len(ids) == len(set(ids)), "patients collide on a shared server"
    index = json.loads((tmp_path / "patients" / "index.json").read_text())
    # The patients were moved to today; the scenarios' clock reads 12:00 UTC (D-2's "given in
    # the last 6 hours" depends on the time of day), so the service's clock does too.
    noon = dt.datetime.combine(dt.datetime.now(dt.timezone.utc).date(), dt.time(12), tzinfo=dt.timezone.utc)
    # The service reads the loaded server's app in process (fhir_server.InProcess: the same
    # answers, no socket): every patient is still fetched, in 3 s rather than 25. Fetching
    # over HTTP is the scenario suite's fetch mode, for every scenario as written.
    fhir = FhirServer(target.store, token=None).__enter__()
    app = create_app({"site_dirs": scenarios.folder_site_dirs(folder)}, clock=lambda: noon, transport=InProcess(fhir))
    client = app.test_client()
    checked = 0
    try:
        for entry in index:
            if not entry["expect"]:
                continue  # the firing scenarios: each must fire through fetching
            request = json.loads((tmp_path / "patients" / entry["request"]).read_text())
            request["fhirServer"] = fhir.base
            service = next(s for s in client.get("/cds-services").get_json()["services"] if s["hook"] == request["hook"])
            response = client.post(f"/cds-services/{service['id']}", json=request)
            assert response.status_code == 200, response.get_data(as_text=True)
            codes = {m for c in response.get_json()["cards"] for m in c["extension"]["myeloma-cds.recommendations"]}
            # the patients are moved to today: INF-8 follows the calendar's influenza season
            # (1 September to 31 March), so it may appear or vanish with the move
            assert codes - {"INF-8"} == set(entry["expect"]) - {"INF-8"}, (entry["scenario"], codes)
            checked += 1
    finally:
        fhir.__exit__()
        web.state_of(app).feedback.close()
    assert checked > 50
    # dates moved so that the scenario's `now` is today
    first = scenarios.load_all([folder])[0]
    dated = next(r for r in first.chart if r.get("authoredOn") or r.get("effectiveDateTime"))
    element = "authoredOn" if dated.get("authoredOn") else "effectiveDateTime"
    shift = dt.datetime.now(dt.timezone.utc).date() - first.now.date()
    posted = next(r for e in target.posted[0]["entry"] if (r := e["resource"])["id"].endswith(dated["id"]))
    assert posted[element][:10] == (dt.date.fromisoformat(dated[element][:10]) + shift).isoformat()


def test_export_needs_a_destination(capsys):
    assert cli.main(["export-patients"]) == 2
    assert "give --out DIR, --post FHIR_BASE, or both" in capsys.readouterr().err
