"""The wheel, installed outside the source tree, serves what the checkout serves.

Builds the wheel (`pip wheel --no-build-isolation`: the build backend is this venv's, the
package index is never asked) from a copy of the checkout under tmp (setuptools writes
build/ and *.egg-info where it builds: never into the checkout, which other tests are
reading meanwhile), installs it with `--no-deps --no-index` into a fresh venv
under tmp, and runs that venv's `mm-cds` with tmp as its working directory. The shortcut,
said plainly: the fresh venv sees this project's installed dependencies through a .pth
line (a plain path: the editable install's own .pth hook is not run from there), so the
wheel's cds_service comes first and the dependencies are not installed again; the test
checks that the cds_service imported is the wheel's, not the checkout's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests

from cds_service import config, knowledge, scenarios

from .support.loopback import first_answer
from .support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"mm-tcell-order-select", "mm-tcell-order-sign", "mm-tcell-chart"}

pytestmark = pytest.mark.slow


# What the checkout holds that is not its source: git, the venv, what builds, runs and caches leave.
_NOT_SOURCE = {".git", ".venv", "build", "dist", "data", "patients", "tmp", ".hypothesis", ".pytest_cache",
               ".mypy_cache", ".ruff_cache", ".grimp_cache"}


def _left_by_builds_and_runs(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if (top and (n in _NOT_SOURCE or n.endswith(".egg-info")))
            or n == "__pycache__" or n.endswith(".pyc") or (n == "_bundled" and Path(folder).name == "cds_service")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, environment, work dir): the wheel installed in a fresh venv."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=_left_by_builds_and_runs)
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(wheels), str(source)], check=True, timeout=300, cwd=tmp)
    (wheel,) = wheels.glob("mm_cds-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MM_CDS_")}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
                "MM_CDS_DATA_DIR": str(tmp / "data")})
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    str(wheel)], check=True, timeout=300, env=env, cwd=tmp)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after the wheel's
    work = tmp / "work"  # not the repository
    work.mkdir()
    return venv, env, work


def _run(installed, *args: str, **kwargs) -> subprocess.CompletedProcess:
    venv, env, work = installed
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, env=env,
                          cwd=work, timeout=300, **kwargs)


def test_the_installed_package_is_the_wheel_and_carries_its_own_knowledge(installed):
    venv, _, _ = installed
    probe = ("import cds_service, json; from cds_service import config, scenarios; "
             "print(json.dumps([cds_service.__file__, config.load().knowledge_dirs, str(scenarios.DEFAULT_FOLDER)]))")
    out = _run(installed, "python", "-c", probe, check=True).stdout
    package, dirs, folder = __import__("json").loads(out)
    assert Path(package).is_relative_to(venv) and not Path(package).is_relative_to(ROOT / "cds_service")
    for path in [*dirs, folder]:  # every default folder is inside the installed package, none in the checkout
        assert Path(path).is_relative_to(Path(package).parent / "_bundled"), path
        assert Path(path).is_dir() and any(Path(path).iterdir()), path


def test_the_installed_service_serves_the_checkouts_knowledge_and_the_page(installed):
    """`mm-cds serve` from the wheel: the three services, the checkout's knowledge (same
    fingerprint: a hash of every file's bytes), a scenario of the page sent to its
    service gets its expected cards, and the page lists the bundled scenarios."""
    venv, env, work = installed
    port = free_port()
    log = (work / "serve.log").open("w+")
    process = subprocess.Popen([str(venv / "bin" / "mm-cds"), "serve"], cwd=work, stdout=log, stderr=log,
                               env={**env, "MM_CDS_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    try:
        discovery = first_answer(f"{base}/cds-services", process, work / "serve.log")
        assert discovery.status_code == 200
        assert {s["id"] for s in discovery.json()["services"]} == SERVICES

        checkout = knowledge.load(config.load({}, environ={}).knowledge_dirs, config.Settings().canonical_base)
        ready = requests.get(f"{base}/ready", timeout=5).json()["knowledge"]
        assert ready["fingerprint"] == checkout.fingerprint

        listed = requests.get(f"{base}/ui/scenarios", timeout=10).json()
        shipped = scenarios.load_all([scenarios.DEFAULT_FOLDER])  # the checkout's tests/scenarios
        assert len(listed) == len(shipped) and {s["name"] for s in listed} == {s.name for s in shipped}
        firing = next(s for s in listed if s["hook"] == "order-sign" and s["expect"] and s["file"] != "seq-1.yaml")
        case = requests.get(f"{base}/ui/scenarios/{firing['id']}", timeout=10).json()
        answer = requests.post(f"{base}/cds-services/{case['service']}", json=case["request"], timeout=30)
        assert answer.status_code == 200, answer.text
        codes = [m for c in answer.json()["cards"] for m in c["extension"]["myeloma-cds.recommendations"]]
        assert sorted(codes) == sorted(firing["expect"]) == case["expect"], (firing["name"], codes)

        page = requests.get(f"{base}/", timeout=10)
        assert page.status_code == 200 and "Try it" in page.text and firing["expect"][0] in page.text  # the catalogue
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def test_installed_mm_cds_test_runs_the_bundled_scenarios_with_their_site(installed):
    result = _run(installed, "mm-cds", "test")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = result.stdout.count("PASS  ")
    assert passed == len(scenarios.load_all([scenarios.DEFAULT_FOLDER])) and "FAIL  " not in result.stdout
    assert "SEQ-1 fires for talquetamab known only by a site code" in result.stdout  # needs the bundled site


def test_installed_mm_cds_readme_says_it_needs_a_source_tree(installed):
    result = _run(installed, "mm-cds", "readme", "--check")
    assert result.returncode == 2
    assert "installed from a wheel, without its source tree" in result.stderr and "Traceback" not in result.stderr
