"""The scale-out shape under a long run: two `mm-cds serve --prod` replicas (2 workers
each) behind nginx, one PostgreSQL (tests/support/replicas.py, as tests/test_replicas.py),
`--calls` authenticated order-sign calls (examples/requests/order-sign-teclistamab.json:
a first teclistamab order, 8 cards) through nginx from `--threads` keep-alive clients,
each call with a fresh JWT living `--lifetime` s (leeway 1 s), issued cards kept
`--retention` s.

Prints: throughput; CPU seconds used by the replicas (gunicorn masters and workers), nginx
and PostgreSQL, and requests per CPU-second of the replicas (less sensitive than
requests/s to other load on the machine: the load average is printed); worker RSS; rows
written (issued_cards, feedback, replay_jti) and the peak and final sizes of the
issued_cards and replay_jti tables, sampled every 0.5 s, against their bounds.

    .venv/bin/python bench/replicas.py                   # 20,000 calls
    .venv/bin/python bench/replicas.py --calls 5000 --threads 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from card_size import report, stored  # noqa: E402

from tests.support.postgres import PostgresCluster, binaries  # noqa: E402
from tests.support.replicas import Load, Replicas  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [pid, *(int(p) for p in found.stdout.split())]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--lifetime", type=int, default=2, help="JWT exp - iat, seconds")
    parser.add_argument("--retention", type=float, default=4.0, help="issued_card_days, in seconds")
    args = parser.parse_args()
    bindir = binaries()
    if bindir is None:
        print("PostgreSQL binaries missing (apt-get install postgresql)")
        return 2
    cluster = PostgresCluster(bindir).start()
    root = Path(tempfile.mkdtemp(prefix="mm-cds-replicas-"))
    shape = Replicas(root, cluster, issued_card_seconds=args.retention,
                     leeway=1)
    try:
        shape.start()
        session = requests.Session()
        for _ in range(50):  # warm up every worker
            shape.hook_call(session)
        masters = [r.process.pid for r in shape.replicas.values()]
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        nginx_pids = tree(int((shape.proxy.run_dir / "nginx.pid").read_text().split()[0])) \
            if (shape.proxy.run_dir / "nginx.pid").exists() else []
        groups = {"replicas": [p for m in masters for p in tree(m)], "nginx": nginx_pids}
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        pg_before = cpu_seconds(tree(postmaster))
        counts_before = {t: shape.count(t) for t in ("issued_cards", "feedback", "replay_jti")}
        samples: list[tuple[int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((shape.count("issued_cards"), shape.count("replay_jti")))
                stop.wait(0.5)

        load1 = os.getloadavg()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = Load(lambda s: shape.hook_call(s, lifetime=args.lifetime).status_code, threads=args.threads,
                    total=args.calls).start()
        statuses = load.join()
        calls = sum(statuses.values())
        stop.set()
        sampler.join()
        load2 = os.getloadavg()
        used = {name: cpu_seconds(pids) - before[name] for name, pids in groups.items()}
        pg_used = cpu_seconds(tree(postmaster)) - pg_before  # backends that exited are not counted
        rss = {name: shape.worker_rss_kib(name) for name in shape.replicas}
        written = shape.query("SELECT n_tup_ins, n_tup_del, relname FROM pg_stat_user_tables")
        print(f"load average before {load1[0]:.2f} {load1[1]:.2f}, after {load2[0]:.2f} {load2[1]:.2f}; "
              f"{os.cpu_count()} cores")
        print(f"{calls} calls, {args.threads} threads, through nginx: {dict(statuses)} in {load.seconds:.1f} s "
              f"= {calls / load.seconds:.0f} requests/s")
        print(f"CPU seconds: replicas {used['replicas']:.1f} ({calls / used['replicas']:.0f} requests per "
              f"CPU-second, {1000 * used['replicas'] / calls:.2f} ms per call), nginx {used['nginx']:.1f}, "
              f"PostgreSQL {pg_used:.1f} ({1000 * pg_used / calls:.2f} ms per call)")
        print("worker RSS (MiB): " + ", ".join(f"{n} {[round(k / 1024) for k in v]}" for n, v in rss.items()))
        print("rows inserted / deleted since start (pg_stat_user_tables): "
              + ", ".join(f"{name} +{ins} -{dele}" for ins, dele, name in sorted(written, key=lambda r: r[2])))
        counts_after = {t: shape.count(t) for t in ("issued_cards", "feedback", "replay_jti")}
        print(f"table rows before {counts_before}, after {counts_after}")
        print(f"issued_cards peak {max(s[0] for s in samples)}, replay_jti peak {max(s[1] for s in samples)} "
              f"({len(samples)} samples)")
        size = shape.query("SELECT pg_database_size(current_database())")[0][0]
        sizes = stored(shape.query)
        print(f"database size {size / 2**20:.1f} MiB; the card tables after VACUUM FULL (the retention window's cards):")
        print(report(sizes, cards=sizes[0][1]))
        return 0 if statuses == {"200": args.calls} else 1
    finally:
        if hasattr(shape, "proxy"):
            shape.stop()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
