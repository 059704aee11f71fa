"""Command line: `mm-cds serve` runs the service; `mm-cds validate` checks the artifacts."""

from __future__ import annotations

import argparse
import sys

from . import config, knowledge
from .errors import KnowledgeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mm-cds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CDS Hooks service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
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


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
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
