"""The compiled build (cds_service/_native.py, `make native`, the image's build stage): the
run finds the build it was told to expect, and start-up refuses a compiled module whose
source has changed, a build record that is missing, or a build compiled only in part.

`make test` runs the suite on the source (MM_CDS_EXPECT_NATIVE=0), then the quick loop and
the tests marked native on the compiled modules (MM_CDS_EXPECT_NATIVE=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cds_service
from cds_service import _native, create_app
from cds_service.errors import ConfigurationError

PACKAGE = Path(cds_service.__file__).resolve().parent


def _found_by_an_installed_process() -> tuple[str, ...]:
    """What `mm-cds` itself imports: a process outside the checkout (-I: neither the working
    directory nor PYTHONPATH on its path, only what the venv installed)."""
    done = subprocess.run([sys.executable, "-I", "-c", "from cds_service import _native; print(*_native.check())"],
                          capture_output=True, text=True, cwd=Path(sys.executable).parent, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return tuple(done.stdout.split())


def test_the_run_imports_the_build_it_was_told_to_expect() -> None:
    expected = os.environ.get("MM_CDS_EXPECT_NATIVE")
    found = _native.check()  # passes on this checkout, whichever build it holds
    assert _found_by_an_installed_process() == found  # the command line runs what the tests run
    if expected == "1":
        assert found == _native.MODULES
        assert all(_native.compiled(m) for m in _native.MODULES)
    elif expected == "0":
        assert found == () and not any(_native.compiled(m) for m in _native.MODULES)
    else:  # a developer's own run: either build, but all of it
        assert found in ((), _native.MODULES)


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A package folder holding the compiled modules' sources and their build record."""
    for module in _native.MODULES:
        source = _native.source_path(PACKAGE, module)
        target = _native.source_path(tmp_path, module)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    (tmp_path / _native.RECORD).write_text(json.dumps(_native.record(tmp_path, "mypyc test")))
    return tmp_path


def _all_compiled(module: str) -> bool:
    return True


def test_a_build_of_the_sources_beside_it_starts(built: Path) -> None:
    assert _native.check(built, _all_compiled) == _native.MODULES
    assert _native.check(built, lambda m: False) == ()  # the source alone needs no record


def test_a_source_changed_after_the_build_stops_start_up_naming_it(built: Path) -> None:
    changed = _native.source_path(built, "cds_service.data._retrieve")
    changed.write_text(changed.read_text() + "\n# edited after make native\n")
    with pytest.raises(_native.BuildMismatch, match=r"data/_retrieve\.py changed since cds_service\.data\._retrieve "
                                                 r"was compiled; run `make native`.*`make pure`"):
        _native.check(built, _all_compiled)


def test_a_build_without_its_record_stops_start_up(built: Path) -> None:
    (built / _native.RECORD).unlink()
    with pytest.raises(_native.BuildMismatch, match=r"_native_build\.json unreadable"):
        _native.check(built, _all_compiled)
    (built / _native.RECORD).write_text("{not json")
    with pytest.raises(_native.BuildMismatch, match=r"_native_build\.json unreadable"):
        _native.check(built, _all_compiled)


def test_a_build_compiled_in_part_stops_start_up_naming_what_runs_as_python(built: Path) -> None:
    with pytest.raises(_native.BuildMismatch, match=r"only some are compiled \(cds_service\.fhirpath\._truth run as Python\)"):
        _native.check(built, lambda m: m != "cds_service.fhirpath._truth")


def test_the_service_does_not_start_on_a_stale_build(monkeypatch, built: Path) -> None:
    changed = _native.source_path(built, "cds_service.fhirpath._compile")
    changed.write_text(changed.read_text() + "\n# edited\n")
    monkeypatch.setattr(_native, "compiled", _all_compiled)
    monkeypatch.setattr(_native, "__file__", str(built / "_native.py"))
    with pytest.raises(ConfigurationError, match=r"fhirpath/_compile\.py changed since"):
        create_app({"log_level": "ERROR"})
