"""A fixed pure-Python task, timed beside the benchmarks: the machine's own speed that day.

The project's machine is a shared 2-core VM. The same commit measured 2.90 ms per call of
workload (a) in process one session and 3.02-3.17 ms the next (the test suite: 184 s, then
200 s), the load average near 0 both times: the host had changed, not the code. Timed
back to back, this task's repeats also drift by up to 10% within a second. It runs no
project code and does the same work on every run (FHIR-like records filtered by code and
value through closures, then sorted: the kind of work a hook call does), so two runs'
numbers are compared after their reference times are; a difference within about 10% of
the reference's own is not evidence about the code. `reference_now()` runs it in a process
of its own (`python bench/reference.py` prints the milliseconds), so that the benchmark's
heap does not slow it, and `machine()` puts it in the header of bench/run.py and
bench/realistic.py. Nothing here imports the benchmark or the project.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RECORDS = 20000
REPEATS = 25


def records() -> list[dict]:
    """The task's input, built outside the timing (allocation varies more than the interpreter)."""
    return [{"resourceType": "Observation", "id": str(i),
             "code": {"coding": [{"system": "http://loinc.org", "code": str(i % 97)}]},
             "valueQuantity": {"value": (i * 7919) % 1000 / 10, "unit": "g/L"}} for i in range(RECORDS)]


def reference_task(data: list[dict]) -> int:
    """The work timed; returns a checksum, the same on every run."""
    wanted = frozenset(str(c) for c in range(0, 97, 5))

    def coded(record: dict) -> bool:
        return any(c["code"] in wanted for c in record["code"]["coding"])

    def above(limit: float) -> Callable[[dict], bool]:
        return lambda record: record["valueQuantity"]["value"] > limit

    high = above(50.0)
    kept = [r for r in data if coded(r) and high(r)]
    kept.sort(key=lambda r: (-r["valueQuantity"]["value"], r["id"]))
    return len(kept) * 1000 + int(kept[0]["id"]) % 1000


def reference_ms(repeats: int = REPEATS) -> float:
    """Median CPU milliseconds of reference_task() over `repeats` runs, the collector off."""
    data = records()
    collecting = gc.isenabled()
    gc.disable()
    try:
        times = []
        for _ in range(repeats):
            started = time.process_time()
            reference_task(data)
            times.append(time.process_time() - started)
    finally:
        if collecting:
            gc.enable()
    return statistics.median(times) * 1000


def machine(reference: float | None = None) -> str:
    """The run's header: cores, CPU, Python, load average and the reference task's time
    (`reference`, else measured now)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    ms = reference_now() if reference is None else reference
    return (f"{os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} "
            f"at start, reference task {ms:.2f} ms")


def reference_now() -> float:
    """The machine's speed now: bench/reference.py's milliseconds, timed in a process of its
    own (in the bench's process, after its 10,000-resource charts, the task took 15% longer)."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve())], capture_output=True, text=True,
                          check=True, timeout=60)
    return float(done.stdout)


if __name__ == "__main__":
    print(f"{reference_ms():.3f}")
