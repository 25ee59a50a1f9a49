#!/usr/bin/env python3
"""An independent fan-out check, to cross-check loadgen's figures.

Plain Python with the `websockets` package: RECEIVERS clients join one room,
SENDERS of them send RATE messages per second in all, and every receiver
parses every frame with json.loads and times it from the send. No code or
logic is shared with loadgen. It prints latency percentiles, losses, and the
process's own CPU per delivery.

    python3 loadgen/scripts/independent_check.py ws://127.0.0.1:8080/ws --receivers 200 --senders 2 --rate 20 --duration 10

Loopback only: the URL must point at 127.0.0.0/8 or localhost.
"""
import argparse
import asyncio
import json
import time
import urllib.parse
import uuid

import websockets


def pct(xs, q):
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--receivers", type=int, default=200)
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=10.0)
    a = ap.parse_args()
    host = urllib.parse.urlparse(a.url).hostname
    assert host == "localhost" or host.startswith("127."), "loopback only"
    room = "py-" + uuid.uuid4().hex[:8]
    lat = []
    seen = {}
    dup = 0
    socks = []
    for i in range(a.receivers):
        ws = await websockets.connect(f"{a.url}?room={room}&nick=py{i}", max_size=2**22)
        while json.loads(await ws.recv()).get("type") != "joined":
            pass
        socks.append(ws)

    async def reader(i, ws):
        nonlocal dup
        try:
            async for raw in ws:
                now = time.perf_counter_ns()
                f = json.loads(raw)
                if f.get("type") != "message" or not f.get("id", "").startswith("py."):
                    continue
                key = (i, f["id"])
                if key in seen:
                    dup += 1
                    continue
                seen[key] = True
                lat.append((now - int(f["id"].split(".")[2])) / 1000.0)
        except websockets.ConnectionClosed:
            pass

    tasks = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(socks)]
    n = int(a.rate * a.duration)
    start = time.perf_counter_ns()
    cpu0 = time.process_time()
    for k in range(n):
        due = start + int(k * 1e9 / a.rate)
        delay = (due - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        msg_id = f"py.{k}.{time.perf_counter_ns()}"
        await socks[k % a.senders].send(json.dumps({"type": "send", "text": "x" * 64, "id": msg_id}))
    await asyncio.sleep(2.0)
    cpu = time.process_time() - cpu0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    expected = n * a.receivers
    print(f"deliveries expected {expected} received {len(lat)} lost {expected - len(lat)} duplicated {dup}")
    print(
        "latency from send: p50 %.0fus p90 %.0fus p99 %.0fus max %.0fus"
        % (pct(lat, 0.5), pct(lat, 0.9), pct(lat, 0.99), max(lat or [0]))
    )
    print(f"python client CPU: {cpu * 1e6 / max(1, len(lat)):.2f} us per delivery")


asyncio.run(main())
