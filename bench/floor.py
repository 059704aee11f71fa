"""What a hook call costs when FHIRPath costs nothing: the floor a faster evaluator could reach (issue 12).

    .venv/bin/python bench/floor.py [--calls 200] [--kinds abc] [--evaluator]

Per workload of bench/workloads.py, at 300 and 10,000 resources: the call as it is, then the
same call with every expression's value replayed from a recording of one real call, so that
everything that is not FHIRPath evaluation still runs (request checks, assembly, medication
resolution, the retrieval of every key the real call read, the engine, rendering, the card
check). The replayed call must answer the same cards as the real one (card uuids aside), or
the script stops: a floor measured on a different answer would mean nothing.

The difference is what the FHIRPath evaluation costs inside a call (the expressions, their
variables, fhirpathpy's functions and nodes); the floor is what no evaluator can remove.
Compare it with the budgets: the server layer (bench/server_profile.py) comes on top of it
in every HTTP request.

That difference is more than the evaluator's own work: it also holds each variable's first
read (an environment miss that computes it) and the cold caches a call runs in.
`--evaluator` adds a table that separates them, at 300 (`evaluator_work`): every run of the
call (nested ones too) executed again on the environment it ran in, where every variable is
computed by then, alone and warm, then all in the call's order, then in order after a whole
call: what a faster evaluator gains on, against the in-call difference.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from workloads import NOW, SIZES, WORKLOADS, request

from cds_service import create_app
from cds_service.data._assemble import Retrievals
from cds_service.fhirpath import Evaluator, plain
from cds_service.service import HookOutcome
from cds_service.service import call as call_hook


class _Recording:
    """The values of a call's outermost expression runs, in order, and the keys it retrieved."""

    def __init__(self) -> None:
        self.values: list[list] = []
        self.keys: list[str] = []


@contextmanager
def recording() -> Iterator[_Recording]:
    """Record one call: the outermost runs' values (a variable's run inside another is part of it)."""
    found, depth = _Recording(), [0]
    run, read = Evaluator.run, Retrievals.__getitem__

    def recorded_run(self: Evaluator, expr: Any, env: Any) -> list:
        depth[0] += 1
        try:
            value = run(self, expr, env)
        finally:
            depth[0] -= 1
        if not depth[0]:
            found.values.append(value)
        return value

    def recorded_read(self: Retrievals, key: str) -> list[dict]:
        if key not in found.keys:
            found.keys.append(key)
        return read(self, key)

    with mock.patch.object(Evaluator, "run", recorded_run), mock.patch.object(Retrievals, "__getitem__", recorded_read):
        yield found


@contextmanager
def replaying(found: _Recording) -> Iterator[None]:
    """Every outermost run answers its recorded value, from the first again for each call
    (a call builds its Retrievals before it evaluates); every key the recorded call read is
    still retrieved, when the call's data is built."""
    position = [0]
    init = Retrievals.__init__

    def replayed_run(self: Evaluator, expr: Any, env: Any) -> list:
        position[0] += 1
        if position[0] > len(found.values):
            raise SystemExit("the replayed call runs more expressions than the recorded one: not the same call")
        return found.values[position[0] - 1]

    def retrieving_init(self: Retrievals, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        position[0] = 0
        for key in found.keys:
            if key not in self:
                raise SystemExit(f"the recorded call read '{key}', which this call does not require: not the same call")
            self[key]  # noqa: B018 - the filtering the real call did during evaluation

    with mock.patch.object(Evaluator, "run", replayed_run), mock.patch.object(Retrievals, "__init__", retrieving_init):
        yield


def _cards(response: dict) -> str:
    return re.sub(r"'uuid': '[^']+'", "", repr(response["cards"]))


def _median_ms(call: Callable[[], Any], calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.process_time()
        call()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1000


def replay_checked(call: Callable[[], HookOutcome], found: _Recording, real: HookOutcome) -> HookOutcome:
    """One replayed call, which must answer the real call's cards: else SystemExit."""
    with replaying(found):
        replayed = call()
    if _cards(replayed.response) != _cards(real.response):
        raise SystemExit("the replayed call answered other cards than the recorded one: no floor measured")
    return replayed


def replayed_ms(call: Callable[[], HookOutcome], real: HookOutcome, calls: int) -> tuple[float, _Recording]:
    """The median CPU ms of `call` with FHIRPath replayed (checked first), and the recording."""
    with recording() as found:
        call()
    replay_checked(call, found, real)
    with replaying(found):
        return _median_ms(call, calls), found


def floor(app: Any, kind: str, n: int, calls: int) -> dict[str, Any]:
    """One row: the call's median CPU ms as it is and with FHIRPath replayed, and its cards."""
    state = app.extensions["mm_cds"]
    service, body, _ = request(kind, n, state.kb.services.values())

    def call() -> HookOutcome:
        return call_hook(state.kb, service, body, NOW, state.fetch)

    for _ in range(5):
        real = call()
    as_is = _median_ms(call, calls)
    without, found = replayed_ms(call, real, calls)
    return {"workload": kind, "resources": n, "cards": len(real.response["cards"]), "runs": len(found.values),
            "keys": len(found.keys), "as_is_ms": as_is, "floor_ms": without}


@contextmanager
def every_run() -> Iterator[list[tuple[Evaluator, Any, Any, list]]]:
    """Record every run of one call, a variable's run inside another included: (evaluator,
    expression, the environment it ran in, its value), in the order they ran."""
    found: list[tuple[Evaluator, Any, Any, list]] = []
    run = Evaluator.run

    def recorded_run(self: Evaluator, expr: Any, env: Any) -> list:
        value = run(self, expr, env)
        found.append((self, expr, env, value))
        return value

    with mock.patch.object(Evaluator, "run", recorded_run):
        yield found


def evaluator_work(call: Callable[[], HookOutcome], runs: list[tuple[Evaluator, Any, Any, list]],
                   repeats: int = 300, passes: int = 100) -> dict[str, float]:
    """What the evaluator itself costs of a call, three ways (ms), from the runs of one call.

    After that call every variable is computed and kept in its environment, so running an
    expression again on the environment it ran in costs the evaluation alone: no variable's
    first read, no retrieval. `alone`: each run repeated `repeats` times (warm caches), the
    means summed; `in_order`: all runs once, in the call's order (median of `passes`);
    `after_call`: the same with a whole call before each pass (the caches a call leaves).
    Every run must answer its recorded value again (else SystemExit): a re-run that did
    other work would time something else.
    """
    for evaluator, expr, env, value in runs:
        if plain(evaluator.run(expr, env)) != plain(value):
            raise SystemExit(f"re-running {expr.source!r} on its environment answered another value: not the same work")
    alone = 0.0
    for evaluator, expr, env, _ in runs:
        started = time.perf_counter()
        for _ in range(repeats):
            evaluator.run(expr, env)
        alone += (time.perf_counter() - started) / repeats

    def one_pass(before: Callable[[], Any] | None) -> float:
        if before is not None:
            before()
        started = time.process_time()
        for evaluator, expr, env, _ in runs:
            evaluator.run(expr, env)
        return time.process_time() - started

    in_order = statistics.median(one_pass(None) for _ in range(passes))
    after_call = statistics.median(one_pass(call) for _ in range(passes))
    return {"runs": len(runs), "alone_ms": alone * 1000, "in_order_ms": in_order * 1000, "after_call_ms": after_call * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--kinds", default="abc")
    parser.add_argument("--evaluator", action="store_true",
                        help="also: what the evaluator itself costs of each call at 300 (evaluator_work)")
    args = parser.parse_args()
    app = create_app({"log_level": "ERROR"}, clock=lambda: NOW)
    print("| workload | chart | cards | outermost runs | keys read | as is, median ms | FHIRPath replayed, ms | FHIRPath share |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for kind in args.kinds:
        for n in SIZES:
            row = rows[kind, n] = floor(app, kind, n, args.calls if n < 10000 else max(20, args.calls // 4))
            share = 1 - row["floor_ms"] / row["as_is_ms"]
            print(f"| ({kind}) {WORKLOADS[kind].name} | {n} | {row['cards']} | {row['runs']} | {row['keys']} | "
                  f"{row['as_is_ms']:.2f} | {row['floor_ms']:.2f} | {share:.0%} |")
    if not args.evaluator:
        return
    print()
    print("| workload, 300 | all runs | each run alone, warm, ms | all runs in order, ms | in order after a call, ms | "
          "FHIRPath in the call (as is - replayed), ms |")
    print("|---|---|---|---|---|---|")
    state = app.extensions["mm_cds"]
    for kind in args.kinds:
        service, body, _ = request(kind, 300, state.kb.services.values())
        call = functools.partial(call_hook, state.kb, service, body, NOW, state.fetch)
        with every_run() as runs:
            call()
        work, row = evaluator_work(call, runs), rows[kind, 300]
        print(f"| ({kind}) {WORKLOADS[kind].name} | {work['runs']} | {work['alone_ms']:.2f} | {work['in_order_ms']:.2f} | "
              f"{work['after_call_ms']:.2f} | {row['as_is_ms'] - row['floor_ms']:.2f} |")


if __name__ == "__main__":
    main()
