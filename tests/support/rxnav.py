"""A fake RxNav REST API on loopback (tests never use the network): answers
/REST/rxcui/{rxcui}/related.json?tty=... with the related.json shape
({"relatedGroup": {"rxcui", "termType", "conceptGroup": [{"tty", "conceptProperties": [...]}]}}),
from a table the test gives. Its codes are test data, never shipped knowledge: they are
9-digit numbers far outside RxNorm's range, named "TEST ...".

`mode` makes it misbehave: "html" (not JSON), "shape" (JSON of another shape), "500".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from werkzeug.wrappers import Request, Response


@dataclass
class FakeRxNav:
    # seed rxcui -> [(rxcui, name, tty)]
    related: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    mode: str = "ok"
    requests: list[str] = field(default_factory=list)

    def __call__(self, environ, start_response):
        request = Request(environ)
        self.requests.append(request.full_path)
        match = re.fullmatch(r"/REST/rxcui/(\d+)/related\.json", request.path)
        if self.mode == "500":
            return Response("boom", status=500)(environ, start_response)
        if match is None:
            return Response("not found", status=404)(environ, start_response)
        if self.mode == "html":
            return Response("<html>maintenance</html>", content_type="text/html")(environ, start_response)
        if self.mode == "shape":
            return Response(json.dumps({"idGroup": {}}), content_type="application/json")(environ, start_response)
        wanted = parse_qs(request.query_string.decode()).get("tty", [""])[0].replace(" ", "+").split("+")
        seed = match.group(1)
        groups: dict[str, list[dict]] = {}
        for rxcui, name, tty in self.related.get(seed, []):
            if tty in wanted:
                groups.setdefault(tty, []).append({"rxcui": rxcui, "name": name, "synonym": "", "tty": tty,
                                                   "language": "ENG", "suppress": "N", "umlscui": ""})
        body = {"relatedGroup": {"rxcui": seed, "termType": wanted,
                                 "conceptGroup": [{"tty": t, "conceptProperties": c} for t, c in groups.items()]}}
        return Response(json.dumps(body), content_type="application/json")(environ, start_response)
