"""The WSGI application for production servers (see gunicorn_conf.py):

    gunicorn -c python:cds_service.gunicorn_conf cds_service.wsgi:app

Settings come from MM_CDS_* variables and MM_CDS_CONFIG, as for `mm-cds serve`. Knowledge
that does not validate (or settings that cannot be used) stops the process here, with
every problem in one JSON log line and exit status 1; under gunicorn (preload_app) that
is the master, before any fork.
"""

from __future__ import annotations

import logging
import sys

from flask import Flask

from cds_service.errors import CdsError
from cds_service.web import create_app


def _build() -> Flask:
    try:
        return create_app(production=True)  # the go-live gate refuses here (docs/terminology.md)
    except (CdsError, ValueError, OSError) as exc:
        # Knowledge artifacts that do not validate, unusable settings, an unreadable file:
        # the message names files, elements and settings, never request or patient data.
        logging.getLogger(__name__).critical(str(exc), extra={"event": "startup_failed",
                                                             "error": type(exc).__name__})
        sys.exit(1)


app = _build()
