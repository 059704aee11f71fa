"""Running the service: metrics, JSON logs, knowledge reload (the gunicorn configuration,
`cds_service.gunicorn_conf`, is the production server's composition root, beside this package).

Public API:
    configure_logging(level), JsonFormatter     one JSON object a log line, no patient data
    Summarised(logger, interval).warning(...)    a per-request warning at most once an interval, counted
    observe_request(endpoint, status, record)   a request's counts from its RequestRecord
    observe_fetch(outcome, seconds), set_knowledge(kb, previous=None), scrape_metrics()
    multiprocess_dir()                           PROMETHEUS_MULTIPROC_DIR under gunicorn
    reload_knowledge(holder) -> ReloadResult     load, validate, swap `holder.kb` if sound
    validate_only(holder) -> problems            what a reload would refuse, swapping nothing
    coalesced(key, dirs, run) -> ReloadResult    one reload per instance; a burst gets its outcome
    admin_token(settings), admin_token_matches(configured, presented)   the reload credential
"""

from cds_service.ops._logs import JsonFormatter, Summarised
from cds_service.ops._logs import configure as configure_logging
from cds_service.ops._metrics import (
    multiprocess_dir,
    observe_fetch,
    observe_request,
    set_knowledge,
)
from cds_service.ops._metrics import scrape as scrape_metrics
from cds_service.ops._reload import (
    ReloadResult,
    admin_token,
    admin_token_matches,
    coalesced,
    reload_knowledge,
    validate_only,
)

__all__ = [
    "JsonFormatter", "ReloadResult", "Summarised", "admin_token", "admin_token_matches", "coalesced", "configure_logging", "multiprocess_dir", "observe_fetch", "observe_request",
    "reload_knowledge", "scrape_metrics", "set_knowledge", "validate_only",
]
