"""Load test of ``genrnn serve``: throughput and latency under concurrent streams.

    python benchmarks/load_test.py                       # trains a 2x256 LSTM briefly, then measures
    python benchmarks/load_test.py --run runs/shakespeare --duration 30 --json out.json

Trains (or takes ``--run``) a realistic model -- the default 2x256 char LSTM,
``--steps`` steps on tiny Shakespeare from ``$GENRNN_SHARED_DATA`` (default
``../shared/data``) -- starts ``genrnn serve`` in a subprocess on loopback,
then for each concurrency level (1, 8, 32, 64) runs that many clients for
``--duration`` seconds. Each client loops: one streamed completion
(``--max-tokens`` tokens, temperature 0.8), then the next. Reported per level:
aggregate completion tokens/s, the mean batch of the server's steps (from
``/healthz``), time to first token (p50, p99), requests, errors (must be 0)
and the server's resident memory (VmRSS) before and after. For scale, the
same model also samples locally in this process at batch 1
(``generate_tokens``, the loop ``benchmarks/sampling.py`` times as "after";
``--local-repeats`` times before and as many after the levels, while the
server idles): the table gives each level against it.

The clients run in this process (bare asyncio connections) on the same
machine as the server, so on a small machine they take some CPU from it: the
figures are a lower bound for what the server alone sustains.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["ROMEO:", "JULIET:\nO ", "First Citizen:\n", "KING HENRY:\nNow ", "To be, or not", "MENENIUS:\nWhat "]


def shared_data() -> Path:
    env = os.environ.get("GENRNN_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def train_model(out: Path, steps: int) -> Path:
    import genrnn

    corpus = shared_data() / "tinyshakespeare" / "input.txt"
    if not corpus.is_file():
        sys.exit(f"load_test: {corpus} not found; set GENRNN_SHARED_DATA or give --run")
    print(f"load_test: training the default 2x256 LSTM for {steps} steps on {corpus} ...", file=sys.stderr)
    t = time.perf_counter()
    genrnn.train(str(corpus), out=out, max_steps=steps, sample_every=0, eval_every=max(steps, 1))
    print(f"load_test: trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(run: Path, port: int, threads: Optional[int], limits: Sequence[str] = ("--max-streams", "256"),
                 name: str = "bench") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "genrnn", "serve", "--model", f"{name}={run}", "--port", str(port),
           *limits, "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a long run's log never fills a pipe and blocks it
    proc = subprocess.Popen(cmd, stderr=log, text=True)
    proc.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            sys.exit(f"load_test: the server exited: {log.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("load_test: the server did not start in 120 s")


USAGE = re.compile(rb'"completion_tokens":(\d+)')


async def one_request(port: int, model: str, prompt: str, max_tokens: int, stats: Dict[str, Any]) -> None:
    """One streamed completion over a raw connection.

    The client is deliberately minimal (asyncio streams, no HTTP library, no
    JSON parsing of the chunks): it shares the machine with the server, and
    an HTTP client parsing every chunk of 64 streams would take the CPU the
    server needs. It only looks for the first ``data:`` (time to first
    token), an error event, the usage of the last chunk and ``[DONE]``.
    """
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    start = time.perf_counter()
    first: Optional[float] = None
    tail = b""
    failed = False
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(head + body)
        await writer.drain()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if first is None and b"data:" in tail + data:
                first = time.perf_counter() - start
            failed = failed or b'data: {"error":' in tail[-16:] + data  # the server failed the stream
            tail = (tail + data)[-4096:]
        writer.close()
    except OSError as e:
        stats["errors"].append(f"{type(e).__name__}: {e}")
        return
    if b"data: [DONE]" not in tail or first is None or failed:  # also any status but 200: no SSE then
        stats["errors"].append(f"{'an error event' if failed else 'no complete stream'}: {tail[-200:]!r}")
        return
    found = USAGE.findall(tail)
    stats["tokens"] += int(found[-1]) if found else 0
    stats["ttft"].append(first)
    stats["requests"] += 1


def server_counters(port: int) -> Dict[str, int]:
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
    return {"steps": health["steps"], "tokens": health["tokens"]}


async def run_level(port: int, model: str, concurrency: int, duration: float, max_tokens: int) -> Dict[str, Any]:
    stats: Dict[str, Any] = {"tokens": 0, "ttft": [], "requests": 0, "errors": []}
    before = server_counters(port)
    start = time.perf_counter()
    deadline = start + duration

    async def worker(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            await one_request(port, model, PROMPTS[i % len(PROMPTS)], max_tokens, stats)
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    after = server_counters(port)
    steps = after["steps"] - before["steps"]
    ttft = sorted(stats["ttft"])
    return {"concurrency": concurrency, "seconds": elapsed, "requests": stats["requests"], "tokens": stats["tokens"],
            "tokens_per_s": stats["tokens"] / elapsed,
            "mean_batch": (after["tokens"] - before["tokens"]) / steps if steps else 0.0,
            "steps_per_s": steps / elapsed,
            "ttft_p50_ms": 1000 * statistics.median(ttft) if ttft else None,
            "ttft_p99_ms": 1000 * ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))] if ttft else None,
            "errors": len(stats["errors"]), "error_samples": stats["errors"][:5]}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def local_rate(run: Path, tokens: int, repeats: int, threads: Optional[int]) -> List[float]:
    """Tokens/s of ``generate_tokens`` at batch 1 in this process (temperature
    0.8, as the clients ask), timed from the first new token to the last."""
    import torch

    import genrnn
    from genrnn.sampling import SampleConfig, generate_tokens
    from genrnn.tokenizers import EOS_ID

    if threads:
        torch.set_num_threads(threads)
    trained = genrnn.load(run, device="cpu")
    ids = [EOS_ID] + trained.tokenizer.encode(PROMPTS[0])
    rates = []
    for r in range(repeats + 1):  # the first is a warm-up
        n, start = 0, 0.0
        for _ in generate_tokens(trained.model, [ids], SampleConfig(max_new_tokens=tokens, temperature=0.8, seed=r)):
            if n == 0:
                start = time.perf_counter()
            n += 1
        if r:
            rates.append((n - 1) / (time.perf_counter() - start))
    return rates


def markdown(results: List[Dict[str, Any]], rss_before: float, local: Optional[float]) -> str:
    base = results[0]["tokens_per_s"] if results else 1.0
    lines = ["| concurrent streams | requests | tokens | tokens/s | x one stream | x local batch 1 | mean batch "
             "| TTFT p50 | TTFT p99 | errors | server RSS after |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        vs_local = f"{r['tokens_per_s'] / local:.2f}" if local else "-"
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} "
                     f"| {r['tokens_per_s'] / base:.1f} | {vs_local} | {r['mean_batch']:.1f} "
                     f"| {r['ttft_p50_ms']:.0f} ms | {r['ttft_p99_ms']:.0f} ms | {r['errors']} "
                     f"| {r['rss_after_mb']:.0f} MB |")
    lines.append(f"\nServer RSS before the load: {rss_before:.0f} MB.")
    if local:
        lines.append(f"Local batch 1 (generate_tokens in the client's process, median): {local:,.0f} tokens/s.")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a trained run folder (default: train one)")
    p.add_argument("--steps", type=int, default=100, help="training steps when no --run (default: 100)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level (default: 15)")
    p.add_argument("--concurrency", default="1,8,32,64", help="levels, comma-separated (default: 1,8,32,64)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per request (default: 256)")
    p.add_argument("--threads", type=int, help="the server's CPU threads (default: PyTorch's choice)")
    p.add_argument("--local-repeats", type=int, default=3,
                   help="local batch-1 runs before and after the levels, for scale (default: 3; 0: none)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_model(Path(tmp) / "run", args.steps)
        port = free_port()
        server = start_server(run, port, args.threads)
        try:
            asyncio.run(run_level(port, "bench", 1, 2.0, 32))  # warm up
            rss_before = rss_mb(server.pid)
            local_runs = local_rate(run, args.max_tokens, args.local_repeats, args.threads) if args.local_repeats else []
            results = []
            for level in [int(x) for x in args.concurrency.split(",")]:
                r = asyncio.run(run_level(port, "bench", level, args.duration, args.max_tokens))
                r["rss_after_mb"] = rss_mb(server.pid)
                results.append(r)
                print(f"load_test: {level:3d} streams: {r['tokens_per_s']:8,.0f} tokens/s, "
                      f"batch {r['mean_batch']:.1f}, "
                      f"TTFT p50 {r['ttft_p50_ms']:.0f} ms p99 {r['ttft_p99_ms']:.0f} ms, {r['requests']} requests, "
                      f"{r['errors']} errors, RSS {r['rss_after_mb']:.0f} MB", file=sys.stderr)
            if args.local_repeats:
                local_runs += local_rate(run, args.max_tokens, args.local_repeats, args.threads)
        finally:
            server.terminate()
            server.wait(10)
    local = statistics.median(local_runs) if local_runs else None
    if local:
        print(f"load_test: local batch 1: {local:8,.0f} tokens/s (runs: "
              f"{', '.join(f'{x:,.0f}' for x in local_runs)})", file=sys.stderr)
    table = markdown(results, rss_before, local)
    print(machine())
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rss_before_mb": rss_before, "results": results,
                                         "local_batch1": local, "local_runs": local_runs,
                                         "max_tokens": args.max_tokens, "duration": args.duration}, indent=2))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
