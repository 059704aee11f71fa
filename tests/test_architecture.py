"""The layout is the architecture: layers, owners of libraries, private modules, no cycles.

The import-linter contracts in pyproject.toml say which package may import which; the
checks below add what import-linter does not: a package's `_private` modules are used only
inside it, module imports form no cycle, and no import hides inside a function.
"""

from __future__ import annotations

import ast
import logging
import pkgutil
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

import cds_service

PACKAGE = Path(cds_service.__file__).resolve().parent
SUBPACKAGES = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]) if m.ispkg and m.name != "schemas")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("cds_service")


def test_the_import_linter_contracts_hold(capsys):
    # lint_imports() calls logging.config.dictConfig, which disables every logger that
    # exists (the service's): later tests reading caplog would see nothing. Restore them.
    loggers = [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    disabled = {logger: logger.disabled for logger in loggers}
    try:
        status = lint_imports(no_cache=True, no_logo=True)
    finally:
        for logger, was in disabled.items():
            logger.disabled = was
    out = capsys.readouterr().out
    assert status == 0, out
    assert "Contracts: 4 kept, 0 broken." in out


def test_every_subpackage_states_its_public_api():
    assert set(SUBPACKAGES) == {"cli", "data", "engine", "feedback", "fhirpath", "knowledge", "ops", "scenarios",
                                "security", "service", "web"}
    for name in SUBPACKAGES:
        init = PACKAGE / name / "__init__.py"
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or ""
        assert "Public API" in doc, f"{name}/__init__.py: no 'Public API' in its docstring"
        exported = next((n for n in tree.body if isinstance(n, ast.Assign)
                         and any(getattr(t, "id", None) == "__all__" for t in n.targets)), None)
        assert exported is not None, f"{name}/__init__.py has no __all__"
        names = {e.value for e in exported.value.elts}  # type: ignore[attr-defined]
        module = __import__(f"cds_service.{name}", fromlist=["_"])
        assert all(hasattr(module, n) for n in names), f"{name}: __all__ names something it does not define"
        others = [p.name for p in (PACKAGE / name).glob("*.py") if p.name != "__init__.py" and not p.name.startswith("_")]
        assert others == [], f"{name}/: modules must be private (_name.py): {others}"


def test_private_modules_are_imported_only_inside_their_package(graph):
    offenders = []
    for module in graph.modules:
        parts = module.split(".")
        if len(parts) < 3 or not parts[2].startswith("_"):
            continue
        owner = ".".join(parts[:2])
        for importer in graph.find_modules_that_directly_import(module):
            if not (importer == owner or importer.startswith(owner + ".")):
                offenders.append(f"{importer} -> {module}")
    assert offenders == []


def test_modules_import_each_other_without_cycles(graph):
    modules = sorted(m for m in graph.modules if m.startswith("cds_service."))
    cycles = []
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("cds_service.") and imported != module and \
                    graph.find_shortest_chain(importer=imported, imported=module):
                # A package importing its own private modules (and they, sibling names
                # through it) is the public-API pattern, not a cycle between concerns.
                if not (module == imported.rsplit(".", 1)[0] or imported == module.rsplit(".", 1)[0]):
                    cycles.append(f"{module} <-> {imported}")
    assert cycles == []


def test_no_import_hides_inside_a_function():
    hidden = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith("cds_service")):
                        hidden.append(f"{path.relative_to(PACKAGE)}:{inner.lineno}")
    assert hidden == []
