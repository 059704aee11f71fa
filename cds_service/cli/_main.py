"""mm-cds: run, validate and document the service.

    mm-cds serve                    run the CDS Hooks service
    mm-cds validate                 validate every knowledge artifact (exit 1 with the problems)
    mm-cds catalogue [--format F]   the recommendation catalogue, generated from the artifacts
    mm-cds terminology check        the go-live gate (exit 1 while not met), unverified codes and concepts
                                    with no code (--strict: exit 1 if any)
    mm-cds terminology expand [--rxnav URL] [--out DIR]   RxNorm expansion through RxNav into a site directory
    mm-cds readme --update|--check  regenerate (or check) the generated sections of docs/catalogue.md
    mm-cds feedback-report [--json] cards shown, accepted and overridden per recommendation
    mm-cds test | explain | reload | export-patients    see cli/_tools.py

`mm-cds serve --prod` replaces itself with gunicorn, configured by cds_service/gunicorn_conf.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cds_service import config, feedback, knowledge, web
from cds_service.cli import _rxnav as rxnav
from cds_service.cli import _tools as cli_tools
from cds_service.errors import ConfigurationError, KnowledgeError

README = config.ROOT / "docs" / "catalogue.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mm-cds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CDS Hooks service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--prod", action="store_true", help="run under gunicorn (several workers)")
    sub.add_parser("validate", help="validate every knowledge artifact")
    cat = sub.add_parser("catalogue", help="print the recommendation catalogue")
    cat.add_argument("--format", choices=("markdown", "html"), default="markdown")
    term = sub.add_parser("terminology", help="terminology status")
    term.add_argument("action", choices=("check", "status", "expand"))
    term.add_argument("--strict", action="store_true", help="exit 1 while anything is unverified or unmapped")
    term.add_argument("--rxnav", help="expand: the RxNav REST base URL (default: the rxnav_url setting)")
    term.add_argument("--out", type=Path, help="expand: the site directory to write to (default: the first site_dirs)")
    readme = sub.add_parser("readme", help="the generated sections of docs/catalogue.md (shipped artifacts only)")
    group = readme.add_mutually_exclusive_group(required=True)
    group.add_argument("--update", action="store_true")
    group.add_argument("--check", action="store_true")
    readme.add_argument("--file", type=Path, default=README)
    report = sub.add_parser("feedback-report", help="cards shown, accepted and overridden per recommendation")
    report.add_argument("--json", action="store_true", help="JSON instead of a table")
    report.add_argument("--database-url", help="postgresql://... (default: the database_url setting)")
    report.add_argument("--data-dir", help="the SQLite folder (default: the data_dir setting)")
    tools = cli_tools.register(sub)
    args = parser.parse_args(argv)
    handlers = {"validate": _validate, "serve": _serve, "catalogue": _catalogue, "terminology": _terminology,
                "readme": _readme, "feedback-report": _feedback_report, **tools}
    try:
        return handlers[args.command](args)
    except ConfigurationError as exc:  # a bad setting: one line naming it, never a traceback
        print(f"mm-cds: {exc}", file=sys.stderr)
        return 2


def _feedback_report(args: argparse.Namespace) -> int:
    settings = config.load({k: v for k, v in (("database_url", args.database_url), ("data_dir", args.data_dir)) if v})
    try:
        db = feedback.open_database(settings.database_url, settings.data_dir)
        reports = feedback.build_report(db)
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:  # the database cannot be reached or read: say so, no traceback
        print(f"cannot read the feedback database: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 2
    print(json.dumps(feedback.report_json(reports), indent=2) if args.json else feedback.report_table(reports))
    return 0


def _load(shipped_only: bool = False) -> knowledge.KnowledgeBase:
    settings = config.load()
    directories = settings.knowledge_dirs if shipped_only else settings.directories
    return knowledge.load(directories, settings.canonical_base, settings.prefetch_date_tokens)


def _validate(args: argparse.Namespace) -> int:
    try:
        kb = _load()
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


def _catalogue(args: argparse.Namespace) -> int:
    kb = _load()
    print(knowledge.catalogue_html(kb) if args.format == "html" else knowledge.catalogue_markdown(kb))
    return 0


def _terminology(args: argparse.Namespace) -> int:
    if args.action == "expand":
        return _terminology_expand(args)
    kb = _load()
    if args.action == "status":
        print(knowledge.terminology_markdown(kb))
        return 0
    gate = knowledge.gate_status(kb, config.load().accept_unverified_treatment_codes)
    text, open_items = knowledge.terminology_check_text(kb)
    print(knowledge.gate_text(gate) + "\n\n" + knowledge.unarmed_text(knowledge.unarmed(kb.plans.values())) + "\n\n" + text)
    print(f"\n{open_items} item(s) to confirm or map before go-live.")
    if not gate.met:  # the production server would refuse to start
        print(f"\nGo-live gate not met: {len(gate.open)} treatment value set(s).", file=sys.stderr)
        return 1
    return 1 if args.strict and open_items else 0


def _terminology_expand(args: argparse.Namespace) -> int:
    settings = config.load()
    out = args.out or (Path(settings.site_dirs[0]) if settings.site_dirs else None)
    if out is None:
        print("mm-cds terminology expand: give --out DIR (a site directory) or set MM_CDS_SITE_DIRS", file=sys.stderr)
        return 2
    kb = _load(shipped_only=True)  # the shipped definitions: an earlier expansion is never re-expanded
    rxnav_url = args.rxnav or settings.rxnav_url
    try:
        report = rxnav.run(kb.resources("ValueSet"), settings.canonical_base, rxnav_url, out)
    except rxnav.RxNavError as exc:
        print(f"mm-cds terminology expand: {exc}; nothing written", file=sys.stderr)
        return 1
    print(f"Expanded through RxNav ({rxnav_url}) into {out}:")
    print("\n".join(report))
    print(f"Start with MM_CDS_SITE_DIRS including {out} to use them (each replaces its shipped value set).")
    return 0


def _readme(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        where = ("this mm-cds is installed from a wheel, without its source tree: run it in a checkout"
                 if config.installed_from_wheel() else "no such file")
        print(f"mm-cds readme: {args.file}: {where} (or give --file README.md)", file=sys.stderr)
        return 2
    kb = _load(shipped_only=True)
    text = args.file.read_text()
    fresh = knowledge.render_readme(text, kb)
    if args.check:
        if fresh != text:
            print(f"{args.file}: generated sections are stale; run `mm-cds readme --update`", file=sys.stderr)
            return 1
        print(f"{args.file}: generated sections are up to date")
        return 0
    args.file.write_text(fresh)
    print(f"{args.file}: generated sections updated")
    return 0


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
    if args.prod:
        return _serve_prod(overrides)
    settings = config.load(overrides)
    try:
        app = web.create_app(settings)
    except KnowledgeError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        print(f"mm-cds: not starting: {exc}", file=sys.stderr)
        return 2
    web.serve_dev(app, settings.host, settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
