#!/usr/bin/env python3
"""Run mm-cds behind nginx: gunicorn on a loopback port only nginx reaches, nginx in front.

    python deploy/nginx/run.py [--host 127.0.0.1] [--port 8080] [--internal-port 8081]
    make serve-proxy                      # the same; MM_CDS_PORT, MM_CDS_INTERNAL_PORT

1. renders a full nginx.conf into a run directory (a fresh temporary one, removed at exit,
   or --run-dir): pid, temp paths and the listen address there, http { } wrapping
   upstream.conf (its `server` lines replaced by the internal address) and mm-cds.conf
   (included verbatim from this directory);
2. starts gunicorn through the stable CLI, `mm-cds serve --prod --host 127.0.0.1
   --port <internal>` (every other setting from the MM_CDS_* variables / MM_CDS_CONFIG),
   and waits for its /ready;
3. starts nginx in the foreground (`daemon off`, its own prefix and configuration: no
   system service, works as root and as any other user);
4. forwards SIGTERM (graceful: nginx QUIT, gunicorn TERM), SIGINT (fast) and SIGHUP
   (nginx re-reads its configuration, gunicorn reloads the knowledge) to both, and exits
   when either exits, stopping the other: status 0 after a requested stop, else the
   status of the one that ended (or 1).

--upstream HOST:PORT (repeatable) runs nginx only, in front of gunicorn instances started
elsewhere. --print-config prints the rendered nginx.conf and exits.

Security: the service decides whether a JWT is required by its own bind address, and
here that is loopback. So when nginx listens off loopback, the configuration
(MM_CDS_CONFIG) must say `require_token = true` in [security] (with its issuers) or
`allow_insecure = true`; otherwise this script refuses to start (status 2).

Standard library only: this runs before, and independently of, the service's package.
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
NGINX_CANDIDATES = ("/usr/sbin/nginx", "nginx")
READY_SECONDS = 90.0  # imports and the knowledge load, on a busy 2-core machine


def log(message: str) -> None:
    print(f"mm-cds proxy: {message}", file=sys.stderr, flush=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def address(host: str, port: int) -> str:
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def insecure_exposure(environ: dict[str, str]) -> str | None:
    """Why listening off loopback would let anyone call without a token, or None."""
    path = environ.get("MM_CDS_CONFIG")
    security: dict = {}
    if path:
        try:
            with open(path, "rb") as fh:
                security = tomllib.load(fh).get("security", {}) or {}
        except (OSError, tomllib.TOMLDecodeError) as exc:
            return f"cannot read MM_CDS_CONFIG {path}: {exc}"
    if security.get("require_token") is True and security.get("issuers"):
        return None
    if security.get("allow_insecure") is True:
        log("WARNING: listening off loopback with allow_insecure = true: calls without a JWT are accepted")
        return None
    return ("nginx would listen off loopback while gunicorn, bound to loopback, accepts calls without a JWT: "
            "set require_token = true and [[security.issuers]] in the [security] table of MM_CDS_CONFIG "
            "(or allow_insecure = true to accept that)")


def render(run_dir: Path, host: str, port: int, upstreams: list[str], user: str | None) -> Path:
    """nginx.conf, mm-cds-listen.conf and upstream.conf in run_dir; the path of nginx.conf."""
    upstream = (HERE / "upstream.conf").read_text()
    servers = "".join(f"    server {u} max_fails={0 if len(upstreams) == 1 else 1};\n" for u in upstreams)
    lines = re.findall(r"(?m)^[ \t]*server[ \t]+[^;\n]*;[^\n]*\n", upstream)
    if not lines:
        raise SystemExit(f"{HERE / 'upstream.conf'}: no `server` line to replace")
    upstream = upstream.replace(lines[0], servers, 1)
    for line in lines[1:]:
        upstream = upstream.replace(line, "", 1)
    (run_dir / "upstream.conf").write_text(upstream)
    (run_dir / "mm-cds-listen.conf").write_text(f"listen {address(host, port)} reuseport;\n")
    temp = {name: run_dir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf = "\n".join([
        "# Rendered by deploy/nginx/run.py; edit deploy/nginx/*.conf instead.",
        "daemon off;",
        "master_process on;",
        "worker_processes auto;",
        *( [f"user {user};"] if user else [] ),
        f"pid {run_dir / 'nginx.pid'};",
        "error_log stderr warn;",
        "events {",
        "    worker_connections 1024;  # per worker process; a proxied call holds two",
        "}",
        "http {",
        "    default_type application/octet-stream;",
        "    access_log off;  # the service logs one JSON line per request itself",
        f"    client_body_temp_path {temp['client_body']};",
        f"    proxy_temp_path {temp['proxy']};",
        f"    fastcgi_temp_path {temp['fastcgi']};",
        f"    uwsgi_temp_path {temp['uwsgi']};",
        f"    scgi_temp_path {temp['scgi']};",
        f"    include {run_dir / 'upstream.conf'};",
        f"    include {HERE / 'mm-cds.conf'};",
        "}",
        "",
    ])
    path = run_dir / "nginx.conf"
    path.write_text(conf)
    return path


def find_nginx(explicit: str | None) -> str:
    for candidate in ([explicit] if explicit else NGINX_CANDIDATES):
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    raise SystemExit("nginx not found (Debian: apt-get install nginx); or pass --nginx PATH")


def find_cli() -> str:
    beside = Path(sys.executable).parent / "mm-cds"  # the virtualenv this script runs in
    found = str(beside) if beside.exists() else shutil.which("mm-cds")
    if not found:
        raise SystemExit("the mm-cds command is not installed (make .venv/.installed)")
    return found


def wait_ready(url: str, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def stop(process: subprocess.Popen | None, sig: int, seconds: float = 40.0) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        process.send_signal(sig)
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("MM_CDS_PUBLIC_HOST", "127.0.0.1"),
                        help="address nginx listens on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MM_CDS_PORT", "8080")),
                        help="port nginx listens on (default MM_CDS_PORT or 8080)")
    parser.add_argument("--internal-port", type=int, default=int(os.environ.get("MM_CDS_INTERNAL_PORT", "8081")),
                        help="loopback port of gunicorn, reached only by nginx (default MM_CDS_INTERNAL_PORT or 8081)")
    parser.add_argument("--upstream", action="append", default=[], metavar="HOST:PORT",
                        help="do not start gunicorn: put nginx in front of this instance (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="where nginx.conf, pid and temp files go (default: a new temp dir)")
    parser.add_argument("--nginx", help="the nginx binary (default /usr/sbin/nginx)")
    parser.add_argument("--user", help="the user nginx workers run as when started as root (default nobody)")
    parser.add_argument("--print-config", action="store_true", help="print the rendered nginx.conf and exit")
    args = parser.parse_args(argv)

    if not is_loopback(args.host):
        problem = insecure_exposure(dict(os.environ))
        if problem:
            log(f"not starting: {problem}")
            return 2

    own_run_dir = args.run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="mm-cds-nginx-")) if own_run_dir else args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    user = None
    if os.geteuid() == 0:
        # nginx's workers drop to this user: they must reach the temp paths in run_dir
        # (nginx creates those itself, mode 0700, owned by the user).
        name = args.user or "nobody"
        user = f"{name} {grp.getgrgid(pwd.getpwnam(name).pw_gid).gr_name}"
        run_dir.chmod(0o711)
    upstreams = args.upstream or [address("127.0.0.1", args.internal_port)]
    conf = render(run_dir, args.host, args.port, upstreams, user)
    if args.print_config:
        print(conf.read_text() + "\n# upstream.conf\n" + (run_dir / "upstream.conf").read_text())
        if own_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        return 0
    nginx_bin = find_nginx(args.nginx)
    nginx_cmd = [nginx_bin, "-p", str(run_dir), "-c", str(conf), "-e", "stderr"]

    gunicorn: subprocess.Popen | None = None
    nginx: subprocess.Popen | None = None
    requested: list[int] = []

    def forward(signum, _frame) -> None:
        requested.append(signum)
        mapping = {signal.SIGTERM: (signal.SIGQUIT, signal.SIGTERM),  # graceful, both
                   signal.SIGINT: (signal.SIGTERM, signal.SIGINT),    # fast, both
                   signal.SIGHUP: (signal.SIGHUP, signal.SIGHUP)}     # reload, both
        to_nginx, to_gunicorn = mapping[signum]
        for process, sig in ((nginx, to_nginx), (gunicorn, to_gunicorn)):
            if process is not None and process.poll() is None:
                process.send_signal(sig)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    try:
        check = subprocess.run([*nginx_cmd, "-t", "-q"], capture_output=True, text=True)
        if check.returncode != 0:
            log(f"nginx configuration refused:\n{check.stderr}")
            return 1
        if not args.upstream:
            gunicorn = subprocess.Popen([find_cli(), "serve", "--prod", "--host", "127.0.0.1",
                                         "--port", str(args.internal_port)], stdin=subprocess.DEVNULL)
            if not wait_ready(f"http://{upstreams[0]}/ready", gunicorn, READY_SECONDS):
                log(f"gunicorn did not become ready on {upstreams[0]}"
                    + (f" (exit status {gunicorn.returncode})" if gunicorn.poll() is not None else ""))
                return (gunicorn.returncode or 1) if gunicorn.poll() is not None else 1
            if requested:
                return 0
        nginx = subprocess.Popen(nginx_cmd, stdin=subprocess.DEVNULL)
        log(f"serving on http://{address(args.host, args.port)} (nginx) -> {', '.join(upstreams)}; "
            f"run directory {run_dir}")
        while True:
            for name, process in (("nginx", nginx), ("gunicorn", gunicorn)):
                if process is not None and process.poll() is not None:
                    status = process.returncode
                    if not requested:
                        log(f"{name} exited with status {status}; stopping")
                    return 0 if requested and status in (0, -signal.SIGTERM, -signal.SIGINT) else (status or 1)
            time.sleep(0.1)
    finally:
        # Whatever ended the loop: nginx first (no new calls), then gunicorn (in-flight finish).
        stop(nginx, signal.SIGQUIT)
        stop(gunicorn, signal.SIGTERM)
        if own_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
