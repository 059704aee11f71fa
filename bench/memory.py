"""Memory of the production server's processes, read from /proc (Linux).

Resident size (RSS) counts a page in every process that maps it: the pages gunicorn's
workers still share with the master after the fork (the preloaded knowledge) are counted
once per process, so a sum of RSS over-states what the machine, or a container's memory
cgroup, holds. The proportional set size (PSS) splits each shared page among its sharers:
summed over the processes it is what they hold together.
"""

from __future__ import annotations

from pathlib import Path


def proc_kb(pid: int | str, name: str, field: str) -> int:
    """The `field:  N kB` line of /proc/<pid>/<name> (status, smaps_rollup)."""
    text = Path(f"/proc/{pid}/{name}").read_text()
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(field + ":"))


def rss_mb(pid: int | str) -> float:
    return proc_kb(pid, "status", "VmRSS") / 1024


def pss_mb(pid: int | str) -> float:
    return proc_kb(pid, "smaps_rollup", "Pss") / 1024


def children(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def server_pss(master: int, workers: list[str]) -> dict[str, float]:
    """PSS of a gunicorn master, its workers and the workers' children (each one's feedback
    writer, cds_service/feedback/_process.py), and their sum (what a pod's cgroup counts)."""
    each = [pss_mb(pid) for pid in workers]
    writers = [pss_mb(child) for pid in workers for child in children(pid)]
    own = pss_mb(master)
    return {"master": own, "workers_total": sum(each), "writers_total": sum(writers), "writers": len(writers),
            "total": own + sum(each) + sum(writers), "workers": len(each)}


def pss_line(pss: dict[str, float]) -> str:
    return (f"    proportional set size (shared pages once, as a memory cgroup counts them): master {pss['master']:.0f} MB"
            f" + {pss['workers']:.0f} workers {pss['workers_total']:.0f} MB"
            f" + {pss['writers']:.0f} feedback writers {pss['writers_total']:.0f} MB = {pss['total']:.0f} MB")
