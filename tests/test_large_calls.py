"""Hook calls with a large body are parsed and evaluated one at a time per process
(`large_request_bytes`, web/_large.py): a worker's memory high-water mark follows one
large chart, not four. The usual calls never wait for a large one."""

from __future__ import annotations

import json
import threading
import time

import pytest

from cds_service import create_app, web
from cds_service.errors import ConfigurationError
from cds_service.web import _hooks

from .support.requests_ import empty_prefetch, order_sign

SIGN = "/cds-services/mm-tcell-order-sign"
LARGE = 50_000  # bytes: the test's threshold; the large body below is about 90 KB, the small 2 KB


def _observation_key(kb) -> str:
    discovery = kb.services["mm-tcell-order-sign"].discovery()
    return next(k for k, template in discovery["prefetch"].items() if template.startswith("Observation?"))


def _body(kb, observations: int) -> dict:
    prefetch = empty_prefetch(kb.services["mm-tcell-order-sign"].discovery(), {"resourceType": "Patient", "id": "p1"})
    prefetch[_observation_key(kb)] = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final", "subject": {"reference": "Patient/p1"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}]},
                      "effectiveDateTime": "2026-06-01T08:00:00Z",
                      "valueQuantity": {"value": 6.1, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"}}}
        for i in range(observations)]}
    return order_sign(prefetch=prefetch)


class Inside:
    """Wraps the service call: how many calls are in it at once, and holds the large ones
    until released."""

    def __init__(self, monkeypatch, key: str, hold_large: bool = False):
        self.key = key
        self.now = self.most = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.entered_large = threading.Semaphore(0)
        self.hold_large = hold_large
        real = _hooks.call

        def call(kb, service, body, *args, **kwargs):
            large = len(body["prefetch"].get(self.key, {}).get("entry", [])) > 100
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                if large:
                    self.entered_large.release()
                    if self.hold_large:
                        assert self.released.wait(10)
                    else:
                        time.sleep(0.2)  # long enough for the other thread to be inside too, if it may
                return real(kb, service, body, *args, **kwargs)
            finally:
                with self.lock:
                    self.now -= 1

        monkeypatch.setattr(_hooks, "call", call)


def _post(app, body: dict, statuses: list[int]) -> None:
    statuses.append(app.test_client().post(SIGN, json=body).status_code)


@pytest.mark.parametrize(("threshold", "at_once"), [(LARGE, 1), (0, 2)], ids=["limited", "no-limit"])
def test_two_large_calls_at_once_are_evaluated_one_after_the_other(kb, tmp_path, monkeypatch, threshold, at_once):
    app = create_app({"data_dir": str(tmp_path), "large_request_bytes": threshold}, kb=kb)
    inside = Inside(monkeypatch, _observation_key(kb))
    statuses: list[int] = []
    threads = [threading.Thread(target=_post, args=(app, _body(kb, 400), statuses)) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert statuses == [200, 200]
        assert inside.most == at_once  # without the limit both are inside together: the test can see it
    finally:
        web.state_of(app).feedback.close()


def test_a_small_call_is_answered_while_a_large_one_runs_and_a_second_large_one_waits(kb, tmp_path, monkeypatch):
    app = create_app({"data_dir": str(tmp_path), "large_request_bytes": LARGE}, kb=kb)
    inside = Inside(monkeypatch, _observation_key(kb), hold_large=True)
    statuses: list[int] = []
    first = threading.Thread(target=_post, args=(app, _body(kb, 400), statuses))
    second = threading.Thread(target=_post, args=(app, _body(kb, 400), statuses))
    try:
        first.start()
        assert inside.entered_large.acquire(timeout=10)  # the first large call is being evaluated
        second.start()
        response = app.test_client().post(SIGN, json=_body(kb, 1))
        assert response.status_code == 200 and response.get_json()["cards"]  # not held behind it
        assert not inside.entered_large.acquire(timeout=0.3)  # the second large call waits outside
        inside.released.set()
        first.join(20)
        second.join(20)
        assert statuses == [200, 200] and inside.most == 2  # the large one and the small one
    finally:
        inside.released.set()
        web.state_of(app).feedback.close()


def test_the_bodies_are_on_either_side_of_the_threshold(kb):
    assert len(json.dumps(_body(kb, 1))) < LARGE < len(json.dumps(_body(kb, 400)))


def test_a_negative_large_request_bytes_stops_start_up_naming_the_setting(kb, tmp_path):
    with pytest.raises(ConfigurationError, match="large_request_bytes"):
        create_app({"data_dir": str(tmp_path), "large_request_bytes": -1}, kb=kb)
