"""Synthetic myeloma patients of a given size, deterministic (seeded), for the benchmark.

A patient on weekly teclistamab after several lines of therapy: years of laboratory
panels (most of them codes no rule looks at, as in a real record), medication orders and
administrations, diagnoses, encounters, vaccinations. About 60% observations, 20%
medication records, the rest diagnoses, encounters, procedures and immunizations.
Sizes are approximate targets; `make_patient(n)` returns exactly n resources.
"""

from __future__ import annotations

import datetime as dt
import random

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
CVX = "http://hl7.org/fhir/sid/cvx"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

# (LOINC, unit, low, high): a lab panel drawn at each visit
PANEL = [
    ("6690-2", "10*9/L", 2.0, 9.0), ("718-7", "g/dL", 8.0, 14.0), ("777-3", "10*9/L", 60, 300),
    ("751-8", "10*9/L", 0.4, 5.0), ("2160-0", "mg/dL", 0.6, 2.0), ("17861-6", "mg/dL", 8.5, 11.0),
    ("1751-7", "g/dL", 3.0, 4.8), ("2532-0", "U/L", 120, 300), ("33358-3", "g/dL", 0.0, 2.5),
    ("36916-5", "mg/L", 5, 200), ("33944-0", "mg/L", 5, 60), ("48378-4", "{ratio}", 0.2, 8.0),
    ("2951-2", "mmol/L", 134, 145), ("2823-3", "mmol/L", 3.4, 5.2), ("1742-6", "U/L", 10, 60),
]
MONTHLY = [("2465-3", "mg/dL", 250, 900), ("29463-7", "kg", 58, 80)]
YEARLY = [("5196-1", None, None, None), ("16933-4", None, None, None), ("16128-1", None, None, None),
          ("56888-1", None, None, None), ("71773-6", None, None, None)]
DRUGS = [("3264", "dexamethasone"), ("358258", "bortezomib"), ("342369", "lenalidomide"),
         ("1721947", "daratumumab"), ("73645", "valacyclovir"), ("198335", "sulfamethoxazole / trimethoprim"),
         ("5640", "ibuprofen"), ("7052", "morphine"), ("29046", "lisinopril"), ("36567", "simvastatin"),
         ("6809", "metformin"), ("1191", "aspirin")]
CONDITIONS = [("C90.00", "Multiple myeloma"), ("I10", "Hypertension"), ("E11.9", "Type 2 diabetes"),
              ("N18.3", "Chronic kidney disease stage 3"), ("D64.9", "Anaemia"), ("M81.0", "Osteoporosis")]


def make_patient(n: int, now: dt.datetime, seed: int = 7, patient_id: str = "bench") -> list[dict]:
    rng = random.Random(seed)
    subject = {"reference": f"Patient/{patient_id}"}
    out: list[dict] = [{"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1956-04-11"}]
    counter = iter(range(10**9))

    def rid(prefix: str) -> str:
        return f"{prefix}-{next(counter)}"

    day = now.date()
    # Teclistamab: weekly for the last 30 weeks, with the active order
    for week in range(30):
        when = now - dt.timedelta(days=7 * week + 2)
        out.append({"resourceType": "MedicationAdministration", "id": rid("ma"), "status": "completed", "subject": subject,
                    "medicationCodeableConcept": {"coding": [{"system": RX, "code": "2619432"}]},
                    "effectiveDateTime": when.isoformat()})
    out.append({"resourceType": "MedicationRequest", "id": rid("mr"), "status": "active", "intent": "order", "subject": subject,
                "authoredOn": (day - dt.timedelta(days=210)).isoformat(),
                "medicationCodeableConcept": {"coding": [{"system": RX, "code": "2619432"}]},
                "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}}}]})
    for code, _ in DRUGS[4:6]:  # prophylaxis, active
        out.append({"resourceType": "MedicationRequest", "id": rid("mr"), "status": "active", "intent": "order", "subject": subject,
                    "authoredOn": (day - dt.timedelta(days=200)).isoformat(),
                    "medicationCodeableConcept": {"coding": [{"system": RX, "code": code}]}})
    out.append({"resourceType": "Immunization", "id": rid("im"), "status": "completed", "patient": subject,
                "vaccineCode": {"coding": [{"system": CVX, "code": "141"}]}, "occurrenceDateTime": (day - dt.timedelta(days=100)).isoformat()})
    out.append({"resourceType": "Condition", "id": rid("co"), "subject": subject, "code": {"coding": [{"system": ICD, "code": "C90.00"}]},
                "clinicalStatus": {"coding": [{"code": "active"}]}, "onsetDateTime": "2019-03-01"})

    # The rest, in proportions, going back in time until n is reached
    visit = 0
    while len(out) < n:
        when = now - dt.timedelta(days=14 * visit + rng.randint(0, 3), hours=rng.randint(0, 8))
        for code, unit, low, high in PANEL:
            out.append(_lab(rid("ob"), subject, code, when, unit, rng.uniform(low, high)))
        if visit % 2 == 0:
            for code, unit, low, high in MONTHLY:
                out.append(_lab(rid("ob"), subject, code, when, unit, rng.uniform(low, high)))
        if visit % 26 == 0:
            for code, *_ in YEARLY:
                out.append({"resourceType": "Observation", "id": rid("ob"), "status": "final", "subject": subject,
                            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when.isoformat(),
                            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009"}]}})
        for _ in range(3):
            code, _name = rng.choice(DRUGS)
            out.append({"resourceType": "MedicationAdministration", "id": rid("ma"), "status": "completed", "subject": subject,
                        "medicationCodeableConcept": {"coding": [{"system": RX, "code": code}]}, "effectiveDateTime": when.isoformat()})
        code, _name = rng.choice(DRUGS)
        out.append({"resourceType": "MedicationRequest", "id": rid("mr"), "status": rng.choice(["completed", "stopped", "completed"]),
                    "intent": "order", "subject": subject, "authoredOn": when.date().isoformat(),
                    "medicationCodeableConcept": {"coding": [{"system": RX, "code": code}]}})
        out.append({"resourceType": "Encounter", "id": rid("en"), "status": "finished", "subject": subject,
                    "class": {"system": ACT, "code": "AMB"}, "period": {"start": when.isoformat()}})
        if visit % 5 == 0:
            code, _name = rng.choice(CONDITIONS)
            out.append({"resourceType": "Condition", "id": rid("co"), "subject": subject, "code": {"coding": [{"system": ICD, "code": code}]},
                        "clinicalStatus": {"coding": [{"code": "active"}]}, "recordedDate": when.date().isoformat()})
            out.append({"resourceType": "Procedure", "id": rid("pr"), "status": "completed", "subject": subject,
                        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "38221"}]}, "performedDateTime": when.isoformat()})
            out.append({"resourceType": "MedicationStatement", "id": rid("ms"), "status": "completed", "subject": subject,
                        "medicationCodeableConcept": {"coding": [{"system": RX, "code": rng.choice(DRUGS)[0]}]},
                        "effectivePeriod": {"start": when.date().isoformat()}})
        visit += 1
    return out[:n]


def _lab(rid: str, subject: dict, code: str, when: dt.datetime, unit: str, value: float) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final", "subject": subject,
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when.isoformat(),
            "valueQuantity": {"value": round(value, 2), "unit": unit, "system": UCUM, "code": unit}}


def order_sign_context(patient_id: str = "bench") -> dict:
    """A next teclistamab dose with its premedication: the everyday order-sign call."""
    subject = {"reference": f"Patient/{patient_id}"}
    orders = [{"resourceType": "MedicationRequest", "id": f"draft-{code}", "status": "draft", "intent": "order", "subject": subject,
               "medicationCodeableConcept": {"coding": [{"system": RX, "code": code}]}}
              for code in ("2619432", "3264", "3498", "161")]
    return {"userId": "Practitioner/bench", "patientId": patient_id,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o} for o in orders]}}


def patient_view_context(patient_id: str = "bench") -> dict:
    return {"userId": "Practitioner/bench", "patientId": patient_id}
