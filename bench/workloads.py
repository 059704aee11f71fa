"""Representative workloads (issue 12): the calls that matter, generated in code, deterministic.

(a) `first-bispecific`: order-sign of a first teclistamab dose at the treatment dose, in an
    ambulatory encounter, for a patient with years of myeloma treatment but no screening:
    the call that issues the most cards (SEQ-1, SCR-1..4, INF-1..6, ADM-1..3).
(b) `chart-open`: patient-view for a patient on weekly teclistamab for months, with years of
    history (INF-1, INF-2, INF-8, MON-1, MON-2 ...).
(c) `car-t-order`: order-sign of a cilta-cel order and a CAR-T referral after teclistamab
    exposure, with high-risk findings (SEQ-2, SEQ-5, INF-1, INF-2 ...).

Each at about 300 and 10,000 chart resources (`chart(kind, n)` returns exactly n). What a
real feed sends, not what a test would write:

* lab units in the forms feeds use: `K/uL`, `cells/uL`, `x10E3/uL`, `mg/dl`, `/mm3` as the
  unit text, sometimes with the UCUM code beside it, sometimes alone (the service then
  tries the text as UCUM: some convert, `K/uL`, `cells/uL`, `x10E3/uL` do not);
* medications as medicationCodeableConcept, as medicationReference to a contained
  Medication (`#m`), and as medicationReference to `Medication/<id>`, whose Medication the
  EHR's search returns as an `_include` entry (search.mode include), as the service's
  medication templates ask (`_include=<type>:medication`);
* prefetch as a conformant CDS Hooks 2.0 EHR fills it from the service's discovery:
  `tests/support/ehr.build_prefetch` (only the 2.0 tokens; a key it cannot resolve is
  omitted), searches run by the tests' independent FHIR search logic.

    .venv/bin/python bench/workloads.py     prints, per workload and size, the chart,
                                             prefetch and cards of one call
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.ehr import build_prefetch  # noqa: E402
from tests.support.fhir_server import FhirStore  # noqa: E402

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)  # fixed: the same cards on every run
SIZES = (300, 10000)
SEED = 12

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
SCT = "http://snomed.info/sct"
CVX = "http://hl7.org/fhir/sid/cvx"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
MMC = "https://myeloma-cds.example.org/fhir/CodeSystem/mm-cds-concepts"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
PATIENT_ID = "wl-patient"
ENCOUNTER_ID = "wl-enc-1"
TECLISTAMAB = "2619432"
MEDICATION_TYPES = ("MedicationRequest", "MedicationAdministration", "MedicationStatement")

# Unit forms seen in real feeds, per analyte: (unit text, UCUM code or None, factor to the
# value in the canonical unit). None: the feed sends the text only.
ANC_FORMS = [("K/uL", "10*3/uL", 1.0), ("x10E3/uL", None, 1.0), ("cells/uL", None, 1000.0),
             ("10*9/L", "10*9/L", 1.0), ("K/uL", None, 1.0), ("/mm3", None, 1000.0)]
IGG_FORMS = [("mg/dl", None, 100.0), ("mg/dL", "mg/dL", 100.0), ("g/L", "g/L", 1.0), ("g/l", None, 1.0)]
WEIGHT_FORMS = [("kg", "kg", 1.0), ("lbs", None, 2.2046), ("[lb_av]", "[lb_av]", 2.2046)]
# Labs no rule reads (most of a real record): (LOINC, unit text, UCUM code or None, low, high)
OTHER_LABS = [
    ("6690-2", "K/uL", None, 2.0, 9.0), ("718-7", "g/dl", None, 8.0, 14.0), ("777-3", "x10E3/uL", None, 60, 300),
    ("2160-0", "mg/dl", None, 0.6, 2.0), ("17861-6", "mg/dL", "mg/dL", 8.5, 11.0), ("1751-7", "g/dL", "g/dL", 3.0, 4.8),
    ("2532-0", "IU/L", None, 120, 300), ("33358-3", "g/dL", "g/dL", 0.0, 2.5), ("36916-5", "mg/L", "mg/L", 5, 200),
    ("48378-4", "{ratio}", "{ratio}", 0.2, 8.0), ("2951-2", "mEq/L", None, 134, 145), ("2823-3", "mmol/L", "mmol/L", 3.4, 5.2),
]
PRIOR_DRUGS = [("3264", "dexamethasone"), ("358258", "bortezomib"), ("342369", "lenalidomide"),
               ("1721947", "daratumumab"), ("5640", "ibuprofen"), ("29046", "lisinopril"), ("36567", "simvastatin"),
               ("6809", "metformin"), ("1191", "aspirin"), ("7052", "morphine")]
OTHER_CONDITIONS = ["I10", "E11.9", "N18.3", "D64.9", "M81.0", "E78.5"]


@dataclass(frozen=True)
class Workload:
    key: str
    name: str
    hook: str
    what: str


WORKLOADS = {
    "a": Workload("a", "first-bispecific", "order-sign", "first teclistamab order, unscreened patient"),
    "b": Workload("b", "chart-open", "patient-view", "on teclistamab for months, years of history, chart open"),
    "c": Workload("c", "car-t-order", "order-sign", "cilta-cel order and CAR-T referral after teclistamab"),
}


def chart(kind: str, n: int, now: dt.datetime = NOW, seed: int = SEED) -> list[dict]:
    """The patient's record for workload `kind` ("a", "b" or "c"): exactly n resources,
    the ones the workload's cards turn on first, then years of ordinary history."""
    rng = random.Random(f"{seed}-{kind}-{n}")
    build = _Chart(now, rng)
    {"a": _first_bispecific, "b": _chart_open, "c": _car_t}[kind](build)
    build.history(n)
    return build.finish(n)


def context(kind: str) -> dict:
    subject = {"reference": f"Patient/{PATIENT_ID}"}
    base = {"userId": "Practitioner/wl-clinician", "patientId": PATIENT_ID}
    if kind == "b":
        return base
    if kind == "a":
        orders = [_med_order(TECLISTAMAB, subject, dose=(1.5, "mg/kg"), text="teclistamab 1.5 mg/kg SC")]
    else:
        orders = [_med_order("2594780", subject, text="ciltacabtagene autoleucel"),
                  {"resourceType": "ServiceRequest", "id": "draft-cart-ref", "status": "draft", "intent": "order",
                   "subject": subject, "code": {"coding": [{"system": MMC, "code": "car-t-referral"}]}}]
    return {**base, "encounterId": ENCOUNTER_ID,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o} for o in orders]}}


def request(kind: str, n: int, services, now: dt.datetime = NOW) -> tuple[object, dict, dict]:
    """(service, body, facts) for one call of workload `kind` at n resources: the body a
    conformant EHR sends, with prefetch filled from the service's discovery templates."""
    workload = WORKLOADS[kind]
    service = next(s for s in services if s.hook == workload.hook)
    records = chart(kind, n, now)
    store = FhirStore(records)
    ctx = context(kind)
    prefetch = build_prefetch(service.prefetch, ctx, store, now.date())  # the searches' _include answered
    body = {"hook": workload.hook, "hookInstance": str(uuid.UUID(int=random.Random(f"{kind}{n}").getrandbits(128), version=4)),
            "context": ctx, "prefetch": prefetch}
    sent = sum(len(v.get("entry", [])) if v.get("resourceType") == "Bundle" else 1
               for v in prefetch.values() if isinstance(v, dict))
    facts = {"chart": len(records), "prefetch_resources": sent, "keys": len(prefetch)}
    return service, body, facts


# -- building a chart ----------------------------------------------------------------------------
class _Chart:
    def __init__(self, now: dt.datetime, rng: random.Random):
        self.now, self.rng = now, rng
        self.subject = {"reference": f"Patient/{PATIENT_ID}"}
        self.records: list[dict] = [{"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1957-09-21"}]
        self.medications: dict[str, dict] = {}
        self.count = 0
        self.essential = 0  # records the workload needs; history fills the rest up to n

    def rid(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}-{self.count}"

    def ago(self, days: float, hours: int = 9) -> dt.datetime:
        return (self.now - dt.timedelta(days=days)).replace(hour=hours, minute=0, second=0)

    def add(self, resource: dict) -> dict:
        self.records.append(resource)
        return resource

    # one medication record, its medication in one of the three forms real feeds use
    def med(self, kind: str, code: str, when: dt.datetime, status: str = "completed", **extra) -> dict:
        record: dict = {"resourceType": kind, "id": self.rid(kind[10:].lower()[:2] or "m"), "status": status,
                        "subject": self.subject, **extra}
        concept = {"coding": [{"system": RX, "code": code}]}
        form = self.count % 3
        if form == 0:
            record["medicationCodeableConcept"] = concept
        elif form == 1:
            record["contained"] = [{"resourceType": "Medication", "id": "m", "code": concept}]
            record["medicationReference"] = {"reference": "#m"}
        else:
            mid = f"rx-{code}"
            self.medications.setdefault(mid, {"resourceType": "Medication", "id": mid, "code": concept})
            record["medicationReference"] = {"reference": f"Medication/{mid}"}
        if kind == "MedicationRequest":
            record.setdefault("intent", "order")
            record["authoredOn"] = when.date().isoformat()
        elif kind == "MedicationAdministration":
            record["effectiveDateTime"] = when.isoformat()
        else:
            record["effectivePeriod"] = {"start": when.date().isoformat()}
        return self.add(record)

    def obs(self, code: str, when: dt.datetime, system: str = LOINC, **value) -> dict:
        return self.add({"resourceType": "Observation", "id": self.rid("ob"), "status": "final", "subject": self.subject,
                         "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": when.isoformat(),
                         **value})

    def quantity(self, code: str, when: dt.datetime, forms: list, canonical: float) -> dict:
        unit, ucum, factor = forms[self.count % len(forms)]
        q: dict = {"value": round(canonical * factor, 2), "unit": unit}
        if ucum:
            q.update(system=UCUM, code=ucum)
        return self.obs(code, when, valueQuantity=q)

    def condition(self, code: str, when: dt.date, active: bool = True) -> dict:
        c: dict = {"resourceType": "Condition", "id": self.rid("co"), "subject": self.subject,
                   "code": {"coding": [{"system": ICD, "code": code}]}, "onsetDateTime": when.isoformat()}
        if active:
            c["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": "active"}]}
        return self.add(c)

    def coded(self, code: str, when: dt.datetime, finding: str, system: str = LOINC) -> dict:
        return self.obs(code, when, system, valueCodeableConcept={"coding": [{"system": SCT, "code": finding}]})

    def prior_lines(self) -> None:
        """Myeloma since 2019: VRd, then daratumumab-based therapy (PI and IMiD exposure)."""
        self.condition("C90.00", dt.date(2019, 3, 1))
        for start, code in ((dt.date(2019, 4, 1), "358258"), (dt.date(2019, 4, 1), "342369"), (dt.date(2021, 9, 1), "1721947")):
            self.med("MedicationStatement", code, dt.datetime.combine(start, dt.time(9), tzinfo=dt.timezone.utc))

    def history(self, n: int) -> None:
        """Visits every two weeks going back in time until n records: lab panels (in the
        feed's units), prior drugs, encounters, now and then a diagnosis."""
        self.essential = len(self.records) + len(self.medications)
        visit = 0
        while len(self.records) + len(self.medications) < n:
            when = self.ago(14 * visit + 20 + self.rng.randint(0, 3), hours=8 + self.rng.randint(0, 6))
            for code, unit, ucum, low, high in OTHER_LABS:
                q: dict = {"value": round(self.rng.uniform(low, high), 2), "unit": unit}
                if ucum:
                    q.update(system=UCUM, code=ucum)
                self.obs(code, when, valueQuantity=q)
            self.quantity("751-8", when, ANC_FORMS, self.rng.uniform(1.5, 5.0))
            if visit % 2 == 0:
                self.quantity("2465-3", when - dt.timedelta(days=60), IGG_FORMS, self.rng.uniform(2.0, 9.0))
                self.quantity("29463-7", when, WEIGHT_FORMS, self.rng.uniform(60, 72))
            for _ in range(2):
                code, _name = self.rng.choice(PRIOR_DRUGS)
                self.med("MedicationAdministration", code, when - dt.timedelta(days=400))
            code, _name = self.rng.choice(PRIOR_DRUGS)
            self.med("MedicationRequest", code, when - dt.timedelta(days=400), status=self.rng.choice(["completed", "stopped"]))
            self.add({"resourceType": "Encounter", "id": self.rid("en"), "status": "finished", "subject": self.subject,
                      "class": {"system": ACT, "code": "AMB"}, "period": {"start": when.isoformat()}})
            if visit % 6 == 0:
                self.condition(self.rng.choice(OTHER_CONDITIONS), when.date(), active=self.rng.random() < 0.5)
                self.add({"resourceType": "Procedure", "id": self.rid("pr"), "status": "completed", "subject": self.subject,
                          "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "38221"}]},
                          "performedDateTime": when.isoformat()})
            visit += 1

    def finish(self, n: int) -> list[dict]:
        """Exactly n: history trimmed from its oldest end, the workload's records kept."""
        keep = n - len(self.medications)
        kept = self.records[:keep]
        used = {(r.get("medicationReference") or {}).get("reference") for r in kept}
        meds = [m for mid, m in self.medications.items() if f"Medication/{mid}" in used]
        out = kept + meds
        while len(out) < n:  # trimmed records referenced fewer Medications: top up with history labs
            out.insert(len(kept), self.quantity("6690-2", self.ago(3000 + len(out)), ANC_FORMS, 4.0))
            self.records.pop()
        return copy.deepcopy(out[:n])


def _med_order(code: str, subject: dict, dose: tuple[float, str] | None = None, text: str | None = None) -> dict:
    order: dict = {"resourceType": "MedicationRequest", "id": f"draft-{code}", "status": "draft", "intent": "order",
                   "subject": subject, "medicationCodeableConcept": {"coding": [{"system": RX, "code": code}], "text": text}}
    if dose:
        order["dosageInstruction"] = [{"text": text, "doseAndRate": [{"doseQuantity": {
            "value": dose[0], "unit": dose[1], "system": UCUM, "code": dose[1]}}]}]
    return order


def _first_bispecific(c: _Chart) -> None:
    """No bispecific or CAR-T ever; no hepatitis, HIV or TB screening in the last year (an
    old positive anti-HBc); a low IgG 45 days ago and none since; a low ANC two days ago
    (K/uL); pneumonia ten days ago; no prophylaxis; weight on record; ambulatory visit."""
    c.prior_lines()
    c.add({"resourceType": "Encounter", "id": ENCOUNTER_ID, "status": "in-progress", "subject": c.subject,
           "class": {"system": ACT, "code": "AMB"}, "period": {"start": c.ago(0, 8).isoformat()}})
    c.quantity("751-8", c.ago(2, 7), [("K/uL", "10*3/uL", 1.0)], 0.4)
    c.quantity("751-8", c.ago(2, 8), [("cells/uL", None, 1000.0)], 0.4)  # the same count, as a feed that sends text
    c.quantity("2465-3", c.ago(45), [("mg/dl", None, 100.0)], 3.1)
    c.quantity("29463-7", c.ago(3), [("kg", "kg", 1.0)], 61.0)
    c.coded("5196-1", c.ago(800), "260385009")
    c.add({"resourceType": "Observation", "id": c.rid("ob"), "status": "final", "subject": c.subject,
           "code": {"coding": [{"system": LOINC, "code": "16933-4"}]}, "effectiveDateTime": c.ago(800).isoformat(),
           "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                           "code": "POS"}]}]})
    c.condition("J18.9", (c.now - dt.timedelta(days=10)).date())


def _chart_open(c: _Chart) -> None:
    """Weekly teclistamab for 30 weeks, CR for 7 months; no prophylaxis on record, no
    influenza vaccine this year, the last IgG three months ago."""
    c.prior_lines()
    c.med("MedicationRequest", TECLISTAMAB, c.ago(215), status="active",
          dosageInstruction=[{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}}}])
    for week in range(30):
        c.med("MedicationAdministration", TECLISTAMAB, c.ago(7 * week + 1))
    for months in (8, 7, 4, 1):
        c.obs("imwg-response", c.ago(30 * months), MMC, valueCodeableConcept={"coding": [{"system": MMC, "code": "CR" if months < 8 else "PR"}]})
    c.quantity("2465-3", c.ago(90), [("mg/dl", None, 100.0)], 5.2)
    c.quantity("751-8", c.ago(6), [("x10E3/uL", None, 1.0)], 2.1)
    c.add({"resourceType": "Immunization", "id": c.rid("im"), "status": "completed", "patient": c.subject,
           "vaccineCode": {"coding": [{"system": CVX, "code": "141"}]}, "occurrenceDateTime": c.ago(420).date().isoformat()})


def _car_t(c: _Chart) -> None:
    """Teclistamab for five months last year (administrations and a statement), del(17p)
    on record; screening done; no prophylaxis."""
    c.prior_lines()
    for week in range(20):
        c.med("MedicationAdministration", TECLISTAMAB, c.ago(200 + 7 * week))
    c.med("MedicationStatement", TECLISTAMAB, c.ago(340))
    c.obs("del17p", c.ago(900), MMC)
    for code in ("5196-1", "16933-4", "16128-1", "56888-1", "71773-6"):
        c.coded(code, c.ago(40), "260385009")
    c.quantity("2465-3", c.ago(12), [("g/L", "g/L", 1.0)], 6.0)
    c.quantity("751-8", c.ago(3), [("K/uL", None, 1.0)], 2.4)
    c.quantity("29463-7", c.ago(3), [("lbs", None, 2.2046)], 64.0)


def main() -> None:
    from cds_service import create_app
    from cds_service.service import call as call_hook

    app = create_app({"log_level": "WARNING"}, clock=lambda: NOW)
    state = app.extensions["mm_cds"]
    for kind, workload in WORKLOADS.items():
        for n in SIZES:
            service, body, facts = request(kind, n, state.kb.services.values())
            outcome = call_hook(state.kb, service, body, NOW, state.fetch)
            cards = outcome.response["cards"]
            codes = [c["source"]["topic"]["code"] for c in cards]
            suggestions = sum(len(c.get("suggestions", [])) for c in cards)
            print(f"({kind}) {workload.name:<17} {n:>6} chart, {facts['prefetch_resources']:>5} in prefetch "
                  f"({facts['keys']} keys): {len(cards)} cards, {suggestions} suggestions {codes}")


if __name__ == "__main__":
    main()
