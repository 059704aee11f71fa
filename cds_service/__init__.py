"""Multiple myeloma T-cell immunotherapy CDS: FHIR PlanDefinitions served over CDS Hooks 2.0.

Public API:
    create_app(settings)        the Flask application (validates the artifacts first)
    load_knowledge(dirs, base)  the compiled knowledge base (raises KnowledgeError)
    evaluate(plan, data, ...)   the pure evaluation core

Imported on first use, not with the package: `cds_service.gunicorn_conf` must set
PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client (see ops/_metrics.py).
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "create_app": ("web", "create_app"),
    "load_knowledge": ("knowledge", "load"),
    "evaluate": ("engine", "evaluate"),
    "RequestData": ("data", "RequestData"),
    "KnowledgeBase": ("knowledge", "KnowledgeBase"),
    "CdsError": ("errors", "CdsError"),
    "KnowledgeError": ("errors", "KnowledgeError"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cds_service' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    return getattr(import_module(f".{module}", __name__), attribute)
