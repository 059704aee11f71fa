"""Clients at a clinician's pace: `clients` keep-alive connections, each waiting a random
time (exponential, mean `think_ms`) between an answer and its next request.

wrk's connections are a closed loop (each sends again the moment it is answered), so
with 32 of them the median is 32 / throughput whatever the server does: it measures the
server saturated. Here the offered load stays below capacity, and what the latency shows
is the server's own queueing among many connections. (wrk can pace too, with a Lua
`delay()`, but its latencies then came out with waits of the size of the think time in
them, 100-240 ms at the 99th percentile from run to run where this client measured 20-22
ms against the same server; hence a client of our own, whose timing is plain to read.)

One asyncio loop, raw HTTP/1.1: a request costs it about 0.1 ms of CPU, so at the rates
used here (150-300 requests/s) it takes a few percent of one core from the server. The
latency of a request on a new connection (after the server's "Connection: close")
includes the connect: a clinician's EHR waits for that too.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from urllib.parse import urlsplit

from run import percentile


async def _client(host: str, port: int, request: bytes, think_s: float, until: float,
                  times: list[float], errors: list[int], rng: random.Random) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while True:
        await asyncio.sleep(rng.expovariate(1 / think_s))
        if time.monotonic() >= until:
            break
        started = time.perf_counter()
        if reader is None or writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        status = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", "0")))
        times.append(time.perf_counter() - started)
        errors[0] += status[9:12] != b"200"
        if headers.get("connection", "").lower() == "close":
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def paced_clients(url: str, body: dict, clients: int, seconds: float, think_ms: float, seed: int = 12) -> dict:
    """Run the clients for `seconds`; the same row shape as run.concurrent_wrk's."""
    split = urlsplit(url)
    data = json.dumps(body).encode()
    request = (f"POST {split.path} HTTP/1.1\r\nHost: {split.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data
    times: list[float] = []
    errors = [0]
    rng = random.Random(seed)

    async def run() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_client(split.hostname or "127.0.0.1", split.port or 80, request, think_ms / 1000,
                                       until, times, errors, rng) for _ in range(clients)))

    began = time.monotonic()
    asyncio.run(run())
    elapsed = time.monotonic() - began
    return {"clients": clients, "requests": len(times), "median_ms": statistics.median(times) * 1000,
            "p95_ms": percentile(times, 95) * 1000, "p99_ms": percentile(times, 99) * 1000,
            "rps": len(times) / elapsed, "errors": errors[0], "driver": f"paced, think {think_ms:g} ms"}
