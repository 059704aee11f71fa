"""One CDS Hooks call end to end, and PlanDefinition/$apply, on top of data and engine.

    request -> validate -> assemble data -> evaluate -> render cards -> check cards -> reply

Public API:
    call(kb, service, body, now, fetch, explain=False) -> HookOutcome
    HookOutcome          .response, .issued (IssuedCard), .dropped, .fetches
    check_request(service, body)        400 (InvalidRequest) for what the 2.0 schemas refuse
    validate(name, value, prefix="")    a body against one of the bundled JSON Schemas
    warm_up()                           build the response validators (the card egress check) now
    check_counts()                      validators built, cards walked by the reference validator
    Repeat, SUPPRESSION_UNAVAILABLE   repeat suppression's inputs (keys, look-up); R-7's words
    RequestRecord, FetchRecord          what a request records, for its log line and metrics
    apply(...), care_plan(...), parameters(body), canonical_url(params)   $apply
    Local, scenario_request(...), prefetch_from_data(...)   in-process calls (CLI, page, $apply)
"""

from cds_service.data import FetchRecord
from cds_service.service._apply import apply, canonical_url, care_plan, parameters
from cds_service.service._call import HookOutcome, call, check_request
from cds_service.service._inprocess import Local, prefetch_from_data, scenario_request
from cds_service.service._record import RequestRecord
from cds_service.service._suppression import UNAVAILABLE as SUPPRESSION_UNAVAILABLE
from cds_service.service._suppression import Repeat
from cds_service.service._validation import check as validate
from cds_service.service._validation import check_counts, warm_up

__all__ = [
    "FetchRecord", "HookOutcome", "Local", "RequestRecord", "Repeat", "SUPPRESSION_UNAVAILABLE", "apply", "call",
    "canonical_url", "care_plan", "check_counts", "check_request", "parameters", "prefetch_from_data", "scenario_request",
    "validate", "warm_up",
]
