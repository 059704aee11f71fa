"""The pure evaluation core: a compiled PlanDefinition evaluated over one request's data.

No I/O, no Flask, no metrics: parsed artifacts and a data context in, results out.

Public API:
    evaluate(plan, data, terminology, explain=False) -> PlanResult
    RequestData          the protocol of what an evaluation reads (the data layer builds it)
    PlanResult, CardResult, SuggestionResult, Outcome   results, for cards and the trace
                         (CardResult.members: a bundle's members evaluated; .codes: what it reports)
    suppress(result, decisions)  leave out suppressed cards and bundle members (re-titles bundles)
    render(result) -> (cards, issued)                   CDS Hooks cards, and what to remember
    IssuedCard           one card issued (uuid, code, version, suggestions; members and the
                         member of each suggestion) for feedback
    build_trace(...)     the explain trace;  EXPLAIN_KEY  its response extension key
    apply_activity(definition, evaluator, env, data, outcomes)  an ActivityDefinition applied
"""

from cds_service.engine._activity import apply as apply_activity
from cds_service.engine._cards import IssuedCard, render
from cds_service.engine._context import Outcome, RequestData
from cds_service.engine._evaluate import (
    CardResult,
    PlanResult,
    SuggestionResult,
    evaluate,
    suppress,
)
from cds_service.engine._trace import EXPLAIN_KEY
from cds_service.engine._trace import build as build_trace

__all__ = [
    "EXPLAIN_KEY", "CardResult", "IssuedCard", "Outcome", "PlanResult", "RequestData", "SuggestionResult",
    "apply_activity", "build_trace", "evaluate", "render", "suppress",
]
