"""mm-cds reload: ask the running service (on this host) to load the edited knowledge."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import requests

from cds_service import config
from cds_service.security import is_loopback

PATH = "/admin/reload"


def register_cli(sub: argparse._SubParsersAction) -> dict[str, Any]:
    cmd = sub.add_parser("reload", help="load the edited knowledge into the running service (on this host)")
    cmd.add_argument("--url", help="the service's base URL (default: http://127.0.0.1:<port setting>)")
    return {"reload": _cli}


def _cli(args: argparse.Namespace) -> int:
    settings = config.load()
    host = settings.host if is_loopback(settings.host) else "127.0.0.1"
    base = (args.url or f"http://{host}:{settings.port}").rstrip("/")
    # The credential: MM_CDS_ADMIN_TOKEN, else security.admin_token of the settings file.
    token = os.environ.get("MM_CDS_ADMIN_TOKEN") or str(settings.security.get("admin_token", ""))
    headers = {"Authorization": f"Bearer {token.strip()}"} if token.strip() else {}
    try:
        response = requests.post(base + PATH, headers=headers, timeout=120)
    except requests.RequestException as exc:
        print(f"mm-cds reload: cannot reach the service at {base}: {type(exc).__name__}", file=sys.stderr)
        return 2
    body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
    if response.status_code == 200:
        print(body.get("message", "reloaded") + (" (the outcome of a reload just made)" if body.get("coalesced") else ""))
        return 0
    if response.status_code == 422:
        print("refused: the knowledge does not validate; the previous knowledge keeps serving:", file=sys.stderr)
        for issue in body.get("issue", []):
            print(f"  - {issue.get('diagnostics')}", file=sys.stderr)
        return 1
    diagnostics = "; ".join(i.get("diagnostics", "") for i in body.get("issue", [])) or response.text[:300]
    print(f"mm-cds reload: HTTP {response.status_code}: {diagnostics}", file=sys.stderr)
    return 2
