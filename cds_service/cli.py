"""Command line: `mm-cds serve` runs the service; `mm-cds validate` checks the artifacts;
`mm-cds feedback-report` summarises the feedback received per recommendation."""

from __future__ import annotations

import argparse
import json
import sys

from . import config, feedback_db, feedback_report, knowledge
from .errors import ConfigurationError, KnowledgeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mm-cds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CDS Hooks service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    sub.add_parser("validate", help="validate every knowledge artifact")
    report = sub.add_parser("feedback-report", help="cards shown, accepted and overridden per recommendation")
    report.add_argument("--json", action="store_true", help="JSON instead of a table")
    report.add_argument("--database-url", help="postgresql://... (default: the database_url setting)")
    report.add_argument("--data-dir", help="the SQLite folder (default: the data_dir setting)")
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate()
    if args.command == "feedback-report":
        return _feedback_report(args)
    return _serve(args)


def _feedback_report(args: argparse.Namespace) -> int:
    settings = config.load({k: v for k, v in (("database_url", args.database_url), ("data_dir", args.data_dir)) if v})
    try:
        db = feedback_db.open_database(settings.database_url, settings.data_dir)
        reports = feedback_report.build(db)
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:  # the database cannot be reached or read: say so, no traceback
        print(f"cannot read the feedback database: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 2
    print(json.dumps(feedback_report.as_json(reports), indent=2) if args.json else feedback_report.as_table(reports))
    return 0


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
    except ConfigurationError as exc:
        print(f"mm-cds: not starting: {exc}", file=sys.stderr)
        return 2
    from werkzeug.serving import run_simple

    print(f"serving {len(app.extensions['mm_cds'].kb.services)} CDS services on "
          f"http://{settings.host}:{settings.port}/cds-services", file=sys.stderr)
    try:
        run_simple(settings.host, settings.port, app, threaded=True, use_reloader=False)
    finally:
        app.extensions["mm_cds"].feedback.close()  # what is queued reaches the database
    return 0


if __name__ == "__main__":
    sys.exit(main())
