"""Dependencies: fhirpathpy's patches refuse another release; pyproject declares what the
code imports; the lock file pins everything and names no host."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from cds_service import errors
from cds_service.fhirpath import _compile, _speedups

ROOT = Path(__file__).resolve().parent.parent


def _other_version(monkeypatch, version: str = "2.3.0") -> None:
    real = metadata.version
    monkeypatch.setattr(_speedups.metadata, "version", lambda name: version if name == "fhirpathpy" else real(name))


def test_the_speedups_refuse_another_fhirpathpy(monkeypatch):
    _other_version(monkeypatch)
    with pytest.raises(errors.IncompatibleLibrary, match=r"fhirpathpy 2\.3\.0 is installed.*fhirpathpy==2\.2\.4"):
        _speedups.install()
    assert issubclass(errors.IncompatibleLibrary, errors.ConfigurationError)
    assert "IncompatibleLibrary" in errors.__doc__  # in the drawn tree


def test_the_compiler_refuses_another_fhirpathpy(monkeypatch):
    _other_version(monkeypatch, "3.0.0")
    monkeypatch.setattr(_compile, "_VERSION_CHECKED", False)
    with pytest.raises(errors.IncompatibleLibrary, match="fhirpathpy 3.0.0"):
        _compile.compile_ast({"children": [{}]}, {})


def test_the_pinned_fhirpathpy_is_accepted(monkeypatch):
    _speedups.require_supported_fhirpathpy()  # the installed one
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"fhirpathpy=={_speedups.SUPPORTED_FHIRPATHPY}" in project["dependencies"]


def _imports(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        found |= set(re.findall(r"^\s*(?:import|from) ([a-zA-Z_][a-zA-Z0-9_]*)", path.read_text(), re.M))
    return found


# import name -> distribution, for every third-party package cds_service imports
RUNTIME = {"antlr4": "antlr4-python3-runtime", "fhir": "fhir.resources", "fhirpathpy": "fhirpathpy",
           "flask": "Flask", "flask_cors": "flask-cors", "gunicorn": "gunicorn", "jsonschema": "jsonschema",
           "jsonschema_rs": "jsonschema-rs",
           "jwt": "PyJWT", "markupsafe": "MarkupSafe", "orjson": "orjson", "prometheus_client": "prometheus_client",
           "pydantic": "pydantic", "requests": "requests", "ucumvert": "ucumvert", "urllib3": "urllib3",
           "werkzeug": "Werkzeug",
           "yaml": "PyYAML"}
OPTIONAL = {"psycopg": "postgres"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_pyproject_declares_what_cds_service_imports_with_ranges():
    import sys

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    third_party = {m for m in _imports(ROOT / "cds_service") if m not in sys.stdlib_module_names} - {"cds_service"}
    third_party -= {"it", "the"}  # words of docstrings that begin with "from"/"import"
    assert third_party == set(RUNTIME) | set(OPTIONAL)
    declared = {_name(r): r for r in project["dependencies"]}
    assert set(declared) == {d.lower() for d in RUNTIME.values()}  # no transitive pins, nothing missing
    for name, requirement in declared.items():
        if name != "fhirpathpy":  # pinned exactly: fhirpath/ patches its internals
            assert re.search(r">=[\d.]+,<\d+", requirement), f"{requirement}: give a compatible range"
    assert "pyjwt[crypto]" in declared["pyjwt"].lower()
    extras = project["optional-dependencies"]
    assert [_name(r) for r in extras["postgres"]] == ["psycopg"] and "psycopg[binary]" in extras["postgres"][0]


def test_the_lock_file_pins_every_package_and_names_no_host():
    text = (ROOT / "requirements.lock").read_text()
    pins = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9._\-\[\],]+==[^\s]+", line.split(" ;")[0].strip()) for line in pins), pins
    names = {_name(line) for line in pins}
    for name in [*(d.lower() for d in RUNTIME.values()), "psycopg", "pytest", "pyinstrument"]:
        assert _canonical(name) in {_canonical(n) for n in names}, f"{name} is not locked"
    assert not re.search(r"https?://|--index-url|--extra-index-url|--find-links|--trusted-host", text)
