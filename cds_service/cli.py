"""Command line: `mm-cds serve` runs the service; `mm-cds validate` checks the artifacts.

`mm-cds serve` is the development server (one process, werkzeug); `mm-cds serve --prod`
replaces itself with gunicorn, configured by cds_service/gunicorn_conf.py.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import config, knowledge
from .errors import KnowledgeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mm-cds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CDS Hooks service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--prod", action="store_true", help="run under gunicorn (several workers)")
    sub.add_parser("validate", help="validate every knowledge artifact")
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate()
    return _serve(args)


def _validate() -> int:
    settings = config.load()
    try:
        kb = knowledge.load(settings.directories, settings.canonical_base)
    except KnowledgeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ok: {len(kb.files)} files, {len(kb.plans)} PlanDefinitions, services: {', '.join(sorted(kb.services))}")
    return 0


GUNICORN = ["-m", "gunicorn", "-c", "python:cds_service.gunicorn_conf", "cds_service.wsgi:app"]


def _serve_prod(overrides: dict[str, object]) -> int:
    # gunicorn_conf reads the settings from the environment, like every other setting.
    for name, value in overrides.items():
        os.environ[f"MM_CDS_{name.upper()}"] = str(value)
    os.execv(sys.executable, [sys.executable, *GUNICORN])
    return 1  # not reached: execv replaces this process


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
    if args.prod:
        return _serve_prod(overrides)
    settings = config.load(overrides)
    from .app import create_app

    try:
        app = create_app(settings)
    except KnowledgeError as exc:
        print(exc, file=sys.stderr)
        return 1
    from werkzeug.serving import run_simple

    print(f"serving {len(app.extensions['mm_cds'].kb.services)} CDS services on "
          f"http://{settings.host}:{settings.port}/cds-services", file=sys.stderr)
    run_simple(settings.host, settings.port, app, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
