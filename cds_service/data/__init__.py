"""The request's data: prefetch as received, fetching what is missing from fhirServer
(concurrently, under one deadline), medication references resolved, and each data
requirement applied in Python (patient, codes, status, dates, newest first).

Public API:
    assemble(service, body, now, fetch) -> Assembled   raises DataUnavailable (412)
    Assembled         .data (RequestData), .reports (per key), .raw (as received), .fetches
    RequestData       what the engine evaluates over
    FetchSettings     transport, executor, timeout, page and byte limits, merged searches' length,
                      the servers refusing _include or merged searches
    IncludeRefusals, MergeRefusals   fhirServer bases that refused `_include` or a merged search
                      (data/_searches.py), remembered for a time (FetchSettings's)
    FetchRecord       one key fetched: outcome kind and seconds (the caller records metrics)
    Transport, HttpTransport, Response, ByteBudget   the injectable HTTP transport (http.client
                      direct, urllib3 through a proxy; RequestsTransport: its former name)
    bundle_resources(bundle), next_link(bundle)         reading Bundles
    same_server(base, url)   url under the FHIR base (normalised; userinfo, `.` and `..` refused)
    draft_orders(context), trigger_orders(hook, context, orders)
No metrics, no Flask: the layer that owns the request records what this returns.
"""

from cds_service.data._assemble import (
    Assembled,
    FetchRecord,
    FetchSettings,
    KeyReport,
    RequestData,
    assemble,
    draft_orders,
    trigger_orders,
)
from cds_service.data._fetch import IncludeRefusals, MergeRefusals, bundle_resources, next_link, same_server
from cds_service.data._http import ByteBudget, HttpTransport, RequestsTransport, Response, Transport

__all__ = [
    "Assembled", "ByteBudget", "FetchRecord", "FetchSettings", "HttpTransport", "IncludeRefusals", "KeyReport",
    "MergeRefusals", "RequestData",
    "RequestsTransport",
    "Response", "Transport", "assemble", "bundle_resources", "draft_orders", "next_link", "same_server", "trigger_orders",
]
