"""The cost of medication resolution: one in-process order-sign and patient-view call on
the synthetic 300- and 10,000-resource patients, medications sent inline
(medicationCodeableConcept) and as medicationReference (contained; the Medication in the
Bundle, as `_include` returns it), CPU time, median of repeated calls.
`.venv/bin/python bench/medications.py` prints the table (the server form is measured by
tests/test_medication_references.py: it adds one Medication read per distinct drug).
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from synthetic import make_patient, order_sign_context, patient_view_context  # noqa: E402

from cds_service import create_app  # noqa: E402
from cds_service.service import call as call_hook  # noqa: E402
from tests.support.ehr import build_prefetch  # noqa: E402
from tests.support.fhir_server import FhirStore  # noqa: E402
from tests.test_medication_references import as_references  # noqa: E402

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
HOOKS = {"order-sign": order_sign_context, "patient-view": patient_view_context}


def main() -> None:
    app = create_app({"log_level": "WARNING"})
    state = app.extensions["mm_cds"]
    print(f"{'resources':>9} {'service':<22} {'form':<10} {'records':>7} {'median ms':>9} {'vs inline':>9}")
    for n in (300, 10000):
        chart = make_patient(n, NOW)
        for hook, make_context in HOOKS.items():
            service = next(s for s in state.kb.services.values() if s.hook == hook)
            context = make_context()
            inline = None
            for form in ("inline", "contained", "bundle"):
                data, rewritten = (chart, 0) if form == "inline" else as_references(chart, form)
                store = FhirStore(data)
                # the medication searches' _include answered: the "bundle" form's Medications arrive with them
                prefetch = build_prefetch(service.prefetch, context, store, NOW.date())
                body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}
                for _ in range(3):
                    outcome = call_hook(state.kb, service, body, NOW, state.fetch)
                times = []
                for _ in range(30 if n < 10000 else 8):
                    started = time.process_time()
                    outcome = call_hook(state.kb, service, body, NOW, state.fetch)
                    times.append(time.process_time() - started)
                median = statistics.median(times) * 1000
                inline = inline or median
                cards = sorted(c["source"]["topic"]["code"] for c in outcome.response["cards"])
                print(f"{n:>9} {service.id:<22} {form:<10} {rewritten:>7} {median:>9.2f} {median - inline:>+9.2f}  {cards}")


if __name__ == "__main__":
    main()
