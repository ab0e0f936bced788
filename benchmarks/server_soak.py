"""Server soak: ``genrnn serve`` under mixed, misbehaving clients for minutes.

    python benchmarks/server_soak.py                          # 10 minutes against a briefly trained 2x256 LSTM
    python benchmarks/server_soak.py --run RUN --duration 120 --json soak.json

Starts ``genrnn serve`` on 127.0.0.1 with small limits (``--max-streams 16``,
``--body-timeout 2``, ``--max-body-bytes 65536``, ``--max-tokens 256``) and
runs ``--clients`` clients for ``--duration`` seconds. Each client loops,
choosing at random (seeded) one of:

* ``stream``: a streamed completion read to ``[DONE]`` (200, or 429 when every
  stream is busy);
* ``plain``: the same without streaming;
* ``disconnect``: a streamed completion dropped after its first chunk;
* ``bad_json``: a truncated JSON body (400);
* ``oversize``: a body over the limit, announced with ``Expect: 100-continue`` as curl does (413);
* ``slow``: a body sent one byte every 0.4 s, slower than ``--body-timeout`` (408; when the
  408 and the server's close cross a byte still being sent, the client's TCP stack
  resets the connection and drops the 408, so those are counted as ``reset`` and
  checked against the server's own count of 408s);
* ``burst``: three times ``--max-streams`` streamed requests at once (200 and 429).

Every 5 s it records the server's resident memory and ``/healthz``. At the end
it waits for the server to go idle and reports the requests by kind and status,
the 5xx count (client side and the server's own ``/healthz`` count), the
statuses a kind should never get, resident memory over time (its growth from
the first minute's median to the last's), and whether every stream slot is
free. The exit status is 0 only if there is no 5xx and no unexpected status,
the server stays up, ends idle and its memory stays flat (growth under 10% and
under 32 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx

from load_test import PROMPTS, free_port, rss_mb, start_server, train_model

MODEL = "soak"
LIMITS = {"max_streams": 16, "body_timeout": 2, "max_body_bytes": 65536, "max_tokens": 256}
EXPECTED = {"stream": {200, 429}, "plain": {200, 429}, "disconnect": {200, 429, None}, "bad_json": {400},
            "oversize": {413}, "slow": {408}, "burst": {200, 429}}
WEIGHTS = {"stream": 4, "plain": 3, "disconnect": 2, "bad_json": 1, "oversize": 1, "slow": 1, "burst": 0.3}


def _completion(stream: bool, rng: random.Random) -> bytes:
    return json.dumps({"model": MODEL, "prompt": rng.choice(PROMPTS), "max_tokens": rng.choice([16, 64, 200]),
                       "temperature": 0.8, "stream": stream}).encode()


def _head(port: int, length: int, expect: bool = False) -> bytes:
    return (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{'Expect: 100-continue' + chr(13) + chr(10) if expect else ''}"
            "Connection: close\r\n\r\n").encode()


async def _status(reader: asyncio.StreamReader) -> Optional[int]:
    line = await reader.readline()
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


async def request(port: int, kind: str, rng: random.Random, timeout: float = 120) -> Optional[int]:
    """One client request of ``kind``; the status the server sent (None: none before we left)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = asyncio.ensure_future(_status(reader))
    try:
        body = _completion(kind != "plain", rng)
        if kind == "bad_json":
            body = body[:-7]
        if kind == "oversize":  # as curl sends a large body: it waits for "100 Continue" (or the refusal)
            body = b" " * (LIMITS["max_body_bytes"] * 4)
            writer.write(_head(port, len(body), expect=True))
            await writer.drain()
            status = await asyncio.wait_for(answered, timeout)
            if status != 100:
                return status
            while (await reader.readline()).strip():  # the rest of the interim response
                pass
            answered = asyncio.ensure_future(_status(reader))
        else:
            writer.write(_head(port, len(body)))
        # the body: at once, or a byte every 0.4 s (slow), until the server answers
        piece, pause = (1, 0.4) if kind == "slow" else (len(body), 0.0)
        try:
            for i in range(0, len(body), piece):
                if answered.done():
                    break
                writer.write(body[i:i + piece])
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
        except (ConnectionError, OSError):  # refused and closed while we still sent
            pass
        status = await asyncio.wait_for(answered, timeout)
        if kind == "disconnect":
            await asyncio.wait_for(reader.read(256), timeout)
            return status  # and leave mid-stream
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
        return status
    finally:
        answered.cancel()
        writer.close()


async def soak(port: int, pid: int, duration: float, clients: int, seed: int) -> Dict[str, Any]:
    counts: Dict[str, Dict[str, int]] = {k: {} for k in EXPECTED}
    unexpected: List[str] = []
    errors: List[str] = []
    samples: List[Dict[str, Any]] = []
    deadline = time.monotonic() + duration
    start = time.monotonic()
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())

    def note(kind: str, status: Optional[int]) -> None:
        counts[kind][str(status)] = counts[kind].get(str(status), 0) + 1
        if status not in EXPECTED[kind]:
            unexpected.append(f"{kind}: {status}")

    async def one(kind: str, rng: random.Random) -> None:
        try:
            note(kind, await request(port, kind, rng))
        except ConnectionResetError as e:
            if kind != "slow":
                errors.append(f"{kind}: {type(e).__name__}: {e}")
            else:  # the 408 and the close crossed a byte still being sent: the reset drops the 408 here
                counts[kind]["reset"] = counts[kind].get("reset", 0) + 1
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            errors.append(f"{kind}: {type(e).__name__}: {e}")

    async def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            if kind == "burst":
                await asyncio.gather(*(one("burst", random.Random(rng.random()))
                                       for _ in range(3 * LIMITS["max_streams"])))
            else:
                await one(kind, rng)

    async def monitor() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while time.monotonic() < deadline:
                h = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
                samples.append({"t": round(time.monotonic() - start, 1), "rss_mb": round(rss_mb(pid), 1),
                                "active": h["active_streams"], "waiting": h["waiting_rows"]})
                await asyncio.sleep(5)

    await asyncio.gather(monitor(), *(client(k) for k in range(clients)))
    async with httpx.AsyncClient(timeout=10) as http:  # idle again: every slot free
        for _ in range(100):
            health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
            if health["active_streams"] == 0 and health["waiting_rows"] == 0:
                break
            await asyncio.sleep(0.1)
    rss = [s["rss_mb"] for s in samples]
    minute = max(1, min(12, len(rss) // 4))  # 12 samples of 5 s, or a quarter of a short soak
    first, last = statistics.median(rss[:minute]), statistics.median(rss[-minute:])
    server_5xx = sum(v for k, v in health["responses"].items() if k.startswith("5"))
    client_5xx = sum(v for c in counts.values() for s, v in c.items() if s.startswith("5"))
    report = {"seconds": round(time.monotonic() - start, 1), "clients": clients, "limits": LIMITS,
              "requests": sum(sum(c.values()) for c in counts.values()), "by_kind": counts,
              "server_responses": health["responses"], "client_5xx": client_5xx, "server_5xx": server_5xx,
              "unexpected": unexpected[:20], "unexpected_count": len(unexpected), "client_errors": errors[:20],
              "client_error_count": len(errors), "rss_mb_first": first, "rss_mb_last": last,
              "rss_mb_max": max(rss), "rss_growth": last / first - 1, "samples": samples,
              "final_active": health["active_streams"], "final_waiting": health["waiting_rows"]}
    # every slow client the server answered: the 408s the clients read, and those a reset dropped
    slow = counts["slow"]
    report["slow_accounted"] = health["responses"].get("408", 0) == slow.get("408", 0) + slow.get("reset", 0)
    report["ok"] = (client_5xx == 0 and server_5xx == 0 and not unexpected and not errors
                    and report["slow_accounted"]
                    and report["final_active"] == 0 and report["final_waiting"] == 0
                    and (report["rss_growth"] < 0.10 and last - first < 32))
    return report


def summary(r: Dict[str, Any]) -> str:
    kinds = "; ".join(f"{k} " + ", ".join(f"{s}: {n}" for s, n in sorted(c.items())) for k, c in r["by_kind"].items())
    return "\n".join([
        f"{r['requests']:,} requests in {r['seconds']:.0f} s from {r['clients']} clients ({kinds})",
        f"5xx: {r['client_5xx']} seen by clients, {r['server_5xx']} counted by the server; unexpected statuses: "
        f"{r['unexpected_count']}; client errors: {r['client_error_count']}; the server's 408s all accounted for: "
        f"{r['slow_accounted']}",
        f"resident memory: {r['rss_mb_first']:.0f} MB in the first minute, {r['rss_mb_last']:.0f} MB in the last "
        f"({100 * r['rss_growth']:+.1f}%), max {r['rss_mb_max']:.0f} MB; at the end {r['final_active']} streams held, "
        f"{r['final_waiting']} waiting",
        "OK" if r["ok"] else "FAILED"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run folder to serve (default: train the default 2x256 LSTM briefly)")
    ap.add_argument("--steps", type=int, default=100, help="training steps when no --run is given")
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="the server's CPU threads")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else train_model(Path(tmp) / "run", args.steps)
        port = free_port()
        limits = [x for k, v in LIMITS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
        server = start_server(run, port, args.threads, limits=limits, name=MODEL)
        try:
            report = asyncio.run(soak(port, server.pid, args.duration, args.clients, args.seed))
            report["server_alive"] = server.poll() is None
            report["ok"] = report["ok"] and report["server_alive"]
        finally:
            server.terminate()
            server.wait(10)
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
