"""The one accessor for what this request records (service, hook, codes, fetches, ...)."""

from __future__ import annotations

from flask import g

from cds_service.service import RequestRecord


def record() -> RequestRecord:
    """This request's record, made when the request starts (the request log's clock)."""
    if "mm_cds_record" not in g:
        g.mm_cds_record = RequestRecord()
    return g.mm_cds_record
