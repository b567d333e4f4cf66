"""Client overhead, measured side by side in one run: our ChatClient against raw httpx, same server, same
requests, at concurrency 1 and 16 (rounds interleaved so that noise hits both alike).

    python -m bench.serving [--requests N] [--latency-ms MS]

The server is bench/fixed_latency_server.py, which answers after a fixed delay: what is left is client cost.
Prints wall time per request for each and the ratio ours / raw (goal: close to 1).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import httpx

from cycleqd.serving.client import ChatClient, ClientSettings, ServedModel
from cycleqd.serving.server_process import free_port

MESSAGES = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "List the files."}]


async def run_ours(client: ChatClient, n: int, concurrency: int) -> float:
    model = ServedModel("fixed", "bench")
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await client.chat(model, MESSAGES, max_tokens=64)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - started


async def run_raw(http: httpx.AsyncClient, n: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    body = {"model": "fixed", "messages": MESSAGES, "max_tokens": 64, "temperature": 0.0}

    async def one() -> None:
        async with gate:
            response = await http.post("/chat/completions", json=body)
            response.json()["choices"][0]["message"]["content"]

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - started


async def wait_until_up(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            try:
                await http.get(url)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"the fixed-latency server did not come up at {url}")


async def main(requests: int, latency_ms: float, rounds: int) -> None:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fixed_latency_server", "--port", str(port), "--latency-ms", str(latency_ms)
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        await wait_until_up(f"{base}/models")
        print(f"fixed-latency server: {latency_ms:.0f} ms per answer; {requests} requests per measurement")
        for concurrency in (1, 16):
            ours, raw = [], []
            settings = ClientSettings(max_concurrency=concurrency)
            limits = httpx.Limits(max_connections=concurrency)
            async with (
                ChatClient(base, settings=settings) as client,
                httpx.AsyncClient(base_url=base, limits=limits) as http,
            ):
                for _ in range(rounds):
                    ours.append(await run_ours(client, requests, concurrency) / requests)
                    raw.append(await run_raw(http, requests, concurrency) / requests)
            mine, theirs = statistics.median(ours), statistics.median(raw)
            print(
                f"concurrency {concurrency:>2}: ours {mine * 1000:.2f} ms/request, raw httpx {theirs * 1000:.2f} "
                f"ms/request -> ratio {mine / theirs:.3f}"
            )
    finally:
        server.terminate()
        await server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.latency_ms, args.rounds))
