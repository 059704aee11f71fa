"""Multiple myeloma T-cell immunotherapy CDS: FHIR PlanDefinitions served over CDS Hooks 2.0.

Public API:
    create_app(settings)        the Flask application (validates the artifacts first)
    load_knowledge(dirs, base)  the compiled knowledge base (raises KnowledgeError)
    evaluate(plan, data, ...)   the pure evaluation core
"""

from .app import create_app
from .errors import CdsError, KnowledgeError
from .evaluation import RequestData, evaluate
from .knowledge import KnowledgeBase
from .knowledge import load as load_knowledge

__all__ = ["create_app", "load_knowledge", "evaluate", "RequestData", "KnowledgeBase", "CdsError", "KnowledgeError"]
