"""The request path's modules that the production build compiles, and the start-up check
that a compiled module is the source it was compiled from.

mypyc (the mypy project's compiler for type-annotated Python) turns the modules below into
C extensions when the build is asked to: `MM_CDS_COMPILE=1` (the image's build stage,
`make native`). A checkout runs them as Python; both run the same source, and the tests
run against both (`make test`). Measured on workloads (a)-(c) (docs/operations.md, thirteenth
session): 14-21% off a call at 300 resources, 19-28% at 10,000, 11-20% more requests a second.

Why these nine: they are most of the call's own Python (the FHIRPath closures, their
three-valued logic and fused shapes, the record readers and result readings, the unit
map, the retriever, the medication resolver, the value sets' look-ups) and they hold no
class or function that the benchmark or the tests replace at run time (a compiled module's
own calls do not see a replacement). The evaluator's entry (fhirpath/_expression.py) and
the data assembly are patched by bench/floor.py and are left as Python; the engine's
modules, compiled, crash the interpreter as their package is imported.

The build writes RECORD beside this file: each compiled module's source hash. Python
prefers an extension module to the source beside it, so a checkout edited after
`make native` would otherwise run the old code without a word; `check()` refuses that at
start-up, naming the module and the command that fixes it.

Imported by setup.py from its path (before the package's dependencies are installed): the
standard library only, and its own exception, which create_app turns into the package's
ConfigurationError.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

MODULES = (
    "cds_service.fhirpath._compile",
    "cds_service.fhirpath._truth",
    "cds_service.fhirpath._fused",
    "cds_service.fhirpath._resources",
    "cds_service.data._retrieve",
    "cds_service.knowledge._terminology",
    "cds_service.data._medications",
    "cds_service.fhirpath._results",
    "cds_service.fhirpath._unit_map",
)
RECORD = "_native_build.json"
FIX = "run `make native` to compile them again, or `make pure` to run the source"


class BuildMismatch(Exception):
    """The compiled modules are not the build of the sources beside them."""


def source_path(package_root: Path, module: str) -> Path:
    """The .py file of `module` (a name under cds_service) below the package's folder."""
    return package_root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(package_root: Path, compiler: str) -> dict[str, object]:
    """What the build writes to RECORD: the compiler and each module's source hash."""
    return {"compiler": compiler,
            "modules": {m: source_hash(source_path(package_root, m)) for m in MODULES}}


def compiled(module: str) -> bool:
    """Whether `module`, as imported, is an extension module (not its source)."""
    origin = getattr(importlib.import_module(module), "__file__", None) or ""
    return any(origin.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def check(package_root: Path | None = None, is_compiled: Callable[[str], bool] | None = None) -> tuple[str, ...]:
    """The compiled modules of MODULES (empty: all Python). Refuses them when
    one was compiled from another source than the one beside it, when the build record is
    missing or unreadable, or when only some of them are compiled: raises BuildMismatch."""
    root = package_root or Path(__file__).resolve().parent
    native = tuple(m for m in MODULES if (is_compiled or compiled)(m))
    if not native:
        return native
    if len(native) != len(MODULES):
        python = ", ".join(m for m in MODULES if m not in native)
        raise BuildMismatch(f"compiled modules: only some are compiled ({python} run as Python); {FIX}")
    try:
        hashes = json.loads((root / RECORD).read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildMismatch(f"compiled modules: {root / RECORD} unreadable ({exc}); {FIX}") from None
    for module in native:
        source = source_path(root, module)
        if source.exists() and hashes.get(module) != source_hash(source):
            raise BuildMismatch(f"compiled modules: {source} changed since {module} was compiled; {FIX}")
    return native
