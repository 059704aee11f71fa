"""Profile one hook call with pyinstrument: where the time of a call goes.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/profile.py [--resources 300] [--hook order-sign] [--interpreted]

--interpreted evaluates FHIRPath with plain fhirpathpy (no compiled closures, no
speed-ups), to see what the fast path removes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import NOW, body_for  # noqa: E402

from cds_service import (
    create_app,  # noqa: E402
    fhirpath,
)
from cds_service.service import call as call_hook


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=300)
    parser.add_argument("--hook", default="order-sign", choices=("order-sign", "patient-view"))
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--interpreted", action="store_true")
    args = parser.parse_args()
    from pyinstrument import Profiler

    app = create_app({"log_level": "WARNING"}, clock=lambda: NOW)
    state = app.extensions["mm_cds"]
    service, body = body_for(app, args.hook, args.resources)
    if args.interpreted:
        fhirpath.set_compiled(False)
        fhirpath.uninstall_speedups()
    for _ in range(10):
        call_hook(state.kb, service, body, NOW, state.fetch)
    profiler = Profiler(interval=0.0002)
    with profiler:
        for _ in range(args.calls):
            call_hook(state.kb, service, body, NOW, state.fetch)
    print(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    main()
