"""The HTTP service (Flask): the app factory, the typed shared state, the blueprints
(CDS Hooks, feedback, /fhir and $apply, the page, health, metrics, OpenAPI, admin
reload), the bearer-token guard and the mapping of the error tree to HTTP answers.
The only package that imports Flask and Werkzeug.

Public API:
    create_app(settings=None, *, kb=None, transport=None, clock=None) -> Flask
    State, state_of(app)       what the handlers share (settings, kb, fetch pool, writer)
    serve_dev(app, host, port)  the development server (`mm-cds serve`), SIGHUP reloads
    gunicorn_when_ready, gunicorn_on_reload   gunicorn hooks for reload
    openapi_source()           the OpenAPI description as written (openapi.yaml)
    (`cds_service.wsgi:app` is the WSGI entry point, `cds_service.gunicorn_conf` the
    production server's configuration: the two composition roots, beside this package)
"""

from cds_service.web._app import create_app
from cds_service.web._dev import serve_dev
from cds_service.web._openapi import source as openapi_source
from cds_service.web._reload import (
           gunicorn_on_reload,
           gunicorn_when_ready,
           install_sighup,
)
from cds_service.web._state import State, state_of

__all__ = ["State", "create_app", "gunicorn_on_reload", "gunicorn_when_ready", "install_sighup", "openapi_source", "serve_dev",
           "state_of"]
