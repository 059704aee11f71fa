"""Knowledge loading: read every artifact, validate it, index it, compile it, or refuse.

Directories are read in order (the shipped plandefinitions/ and valuesets/, then any
site directories); a resource whose canonical url was already loaded replaces the
earlier one, and the replacement is logged. Every file is validated against the FHIR
R4B models of fhir.resources, every FHIRPath expression strictly parsed, every
reference (Library, ActivityDefinition, ValueSet) resolved. All problems are collected
and reported together, each naming the file, the resource and the element at fault.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from cds_service.errors import KnowledgeError, Problem
from cds_service.knowledge import _unit_maps as unit_maps
from cds_service.knowledge._compiler import Compiler
from cds_service.knowledge._model import Artifact, Plan, Service
from cds_service.knowledge._terminology import Terminology

log = logging.getLogger(__name__)

KINDS = ("PlanDefinition", "ActivityDefinition", "Library", "ValueSet", "CodeSystem", "ConceptMap")
RESULT_TEXT = "/CodeSystem/result-text"  # the CodeSystem whose codes are result strings (D-3)


@dataclass
class KnowledgeBase:
    """Everything the engine knows, compiled; immutable once built."""

    base: str
    artifacts: dict[str, Artifact]  # by canonical url
    terminology: Terminology
    plans: dict[str, Plan]  # by PlanDefinition url
    services: dict[str, Service]  # by service id
    files: list[str] = field(default_factory=list)
    fingerprint: str = ""
    load_seconds: float = 0.0
    loaded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def resources(self, kind: str) -> list[dict]:
        return [a.resource for a in self.artifacts.values() if a.resource.get("resourceType") == kind]

    def service_for(self, service_id: str, hook: str | None) -> Service | None:
        """A service by id; a PlanDefinition id also works, the request's hook selecting."""
        if service_id in self.services:
            return self.services[service_id]
        for service in self.services.values():
            if service.plan.id == service_id and service.hook == hook:
                return service
        return None


_settled: list[weakref.ref] = []  # the knowledge base frozen last
# Young-generation threshold of a settled process (CPython's default is 700). A call keeps
# its working set alive until it answers (nodes, lists, environments: 700-2,000 container
# objects at 300 resources, 2,000-5,000 at 10,000), so at 700 the collector ran about once per
# call at 300 and four times at 10,000, each time walking objects that refcounting frees a
# moment later (3-4% of a call, docs/operations.md). At 10,000 no in-process call of
# bench/workloads.py collects; a request body's parse still may (its objects live longer).
YOUNG_THRESHOLD = 10_000


def settle(kb: KnowledgeBase | None = None) -> None:
    """Move what is alive now (the compiled knowledge, imported modules) out of the garbage
    collector's reach.

    The knowledge base is a large, long-lived object graph; a request parsing a big
    prefetch allocates enough to trigger full collections, which would walk it every time
    (tail latency). Frozen objects are not scanned, and after a fork their pages stay
    shared between workers. After a reload the old knowledge is released first. Settling
    the knowledge base that was settled last does nothing. The young generation's threshold
    is raised to YOUNG_THRESHOLD, so that a call's own working set does not trigger a
    collection (cyclic garbage is still collected, at most that many allocations later).
    """
    young, older, oldest = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:  # 0: collection switched off, left so
        gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    if kb is not None and _settled and _settled[0]() is kb:
        return  # already frozen: another app (a test's, say) over the same knowledge
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _settled[:] = [weakref.ref(kb)] if kb is not None else []


def load(directories: Iterable[str | Path], base: str, date_tokens: bool = False) -> KnowledgeBase:
    """Load, validate and compile the artifacts; raises KnowledgeError listing every problem.

    `date_tokens` (setting prefetch_date_tokens): prefetch templates may carry CRD-style
    {{today() - N days}} tokens; off, only CDS Hooks 2.0 tokens are built or accepted."""
    started = time.perf_counter()
    problems: list[Problem] = []
    artifacts: dict[str, Artifact] = {}
    files: list[str] = []
    digest = hashlib.sha256()
    for directory in directories:
        for path in _json_files(Path(directory), problems):
            files.append(str(path))
            raw = path.read_bytes()
            digest.update(raw)
            artifact = _read_artifact(path, raw, problems)
            if artifact is not None:
                _register(artifact, artifacts, problems)
    if problems:
        raise KnowledgeError(problems)

    unit_map, unit_problems = unit_maps.build(artifacts, base)
    problems.extend(unit_problems)
    terminology = Terminology(
        {url: a.resource for url, a in artifacts.items() if a.resource["resourceType"] == "ValueSet"},
        {url: a.resource for url, a in artifacts.items() if a.resource["resourceType"] == "CodeSystem"},
        unit_map=unit_map,
        result_text_system=base.rstrip("/") + RESULT_TEXT,
    )
    for url, error in terminology.expand_all():
        artifact = artifacts[url]
        problems.append(Problem(artifact.file, artifact.label, f"ValueSet.{error.element}", str(error)))

    compiler = Compiler(artifacts, terminology, base, date_tokens)
    plans = {
        url: plan
        for url, artifact in artifacts.items()
        if artifact.resource["resourceType"] == "PlanDefinition"
        and (plan := compiler.plan(artifact)) is not None
    }
    # Every ActivityDefinition is checked, used by a PlanDefinition or not: a site's file
    # that nothing names yet is refused now, not when a later edit starts to apply it.
    for url, artifact in artifacts.items():
        if artifact.resource["resourceType"] == "ActivityDefinition":
            compiler.activity(url)
    problems.extend(compiler.problems)
    services = _services(plans, problems)
    if problems:
        raise KnowledgeError(problems)
    kb = KnowledgeBase(
        base=base,
        artifacts=artifacts,
        terminology=terminology,
        plans=plans,
        services=services,
        files=files,
        fingerprint=digest.hexdigest()[:16],
        load_seconds=time.perf_counter() - started,
    )
    log.info(
        "knowledge loaded",
        extra={"event": "knowledge_loaded", "files": len(files), "services": sorted(services),
               "seconds": round(kb.load_seconds, 3), "fingerprint": kb.fingerprint},
    )
    return kb


def _json_files(directory: Path, problems: list[Problem]) -> list[Path]:
    if not directory.is_dir():
        problems.append(Problem(str(directory), "", "", "knowledge directory does not exist"))
        return []
    return sorted(p for p in directory.rglob("*.json") if p.is_file())


def _read_artifact(path: Path, raw: bytes, problems: list[Problem]) -> Artifact | None:
    file = str(path)
    try:
        resource = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f"line {exc.lineno} column {exc.colno}: " if isinstance(exc, json.JSONDecodeError) else ""
        problems.append(Problem(file, "", "", f"invalid JSON: {where}{getattr(exc, 'msg', exc)}"))
        return None
    if not isinstance(resource, dict) or resource.get("resourceType") not in KINDS:
        kind = resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
        label = f"{kind}/{resource.get('id', '?')}" if isinstance(resource, dict) else ""
        problems.append(Problem(file, label, "resourceType", f"'{kind}' is not one of {', '.join(KINDS)}"))
        return None
    artifact = Artifact(resource, file)
    before = len(problems)
    _validate_fhir(artifact, problems)
    for element in ("id", "url"):
        if not resource.get(element):
            problems.append(Problem(file, artifact.label, f"{resource['resourceType']}.{element}", "is required"))
    return artifact if len(problems) == before else None


def _validate_fhir(artifact: Artifact, problems: list[Problem]) -> None:

    kind = artifact.resource["resourceType"]
    try:
        get_fhir_model_class(kind).model_validate(artifact.resource)
    except ValidationError as exc:
        for error in exc.errors()[:10]:
            element = kind + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
            problems.append(Problem(artifact.file, artifact.label, element, _fhir_message(dict(error))))
    except Exception as exc:  # fhir.resources raises its own errors for some inputs
        problems.append(Problem(artifact.file, artifact.label, kind, f"not valid FHIR R4: {exc}"))


def _fhir_message(error: dict[str, Any]) -> str:
    if error.get("type") == "extra_forbidden":
        return "unknown element (not in the FHIR R4 definition of this resource)"
    return f"not valid FHIR R4: {error.get('msg')}"


def _register(artifact: Artifact, artifacts: dict[str, Artifact], problems: list[Problem]) -> None:
    url = artifact.resource["url"]
    earlier = artifacts.get(url)
    if earlier is not None:
        if Path(earlier.file).parent == Path(artifact.file).parent:
            problems.append(Problem(artifact.file, artifact.label, "url",
                                    f"the same url is also defined in {earlier.file}"))
            return
        log.warning(
            "knowledge artifact replaced",
            extra={"event": "artifact_replaced", "url": url, "by": artifact.file, "was": earlier.file},
        )
    artifacts[url] = artifact


def _services(plans: dict[str, Plan], problems: list[Problem]) -> dict[str, Service]:
    services: dict[str, Service] = {}
    for plan in plans.values():
        prefetch = {r.key: r.template for r in plan.requirements if r.template}
        for hook in plan.hooks:
            service_id = plan.id if len(plan.hooks) == 1 else f"{plan.id}-{hook}"
            if service_id in services:
                problems.append(Problem(plan.file, f"PlanDefinition/{plan.id}", "id",
                                        f"service id '{service_id}' is used by another PlanDefinition"))
                continue
            services[service_id] = Service(service_id, hook, plan, prefetch)
    return services
