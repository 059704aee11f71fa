"""The benchmark's scripts, imported by tests as bench/run.py imports them: with bench/ on
sys.path (its scripts import each other by bare name) for as long as the test uses them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"


@contextmanager
def bench_module(name: str) -> Iterator[ModuleType]:
    """bench/<name>.py as a module, bench/ on sys.path until the block ends."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
