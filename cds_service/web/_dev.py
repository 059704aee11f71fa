"""The development server (`mm-cds serve`): Werkzeug, threaded, SIGHUP reloads."""

from __future__ import annotations

import sys

from flask import Flask
from werkzeug.serving import run_simple

from cds_service.web._reload import install_sighup
from cds_service.web._state import state_of


def serve_dev(app: Flask, host: str, port: int) -> None:
    current = state_of(app)
    install_sighup(app)  # SIGHUP: reload the knowledge, keep serving
    print(f"serving {len(current.kb.services)} CDS services on http://{host}:{port}/cds-services", file=sys.stderr)
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        current.feedback.close()  # what is queued reaches the database
