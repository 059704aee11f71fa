"""The mm-cds command: serve, validate, catalogue, terminology, readme, feedback-report,
test, explain, reload, export-patients. Public API: main(argv=None) -> exit status."""

from cds_service.cli._main import main

__all__ = ["main"]
