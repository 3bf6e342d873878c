"""Benchmark the GraphQL plane and realtime through Nginx: prints figures, asserts nothing.

    python tests/benchmarks/bench_realtime.py [STACK] [--name NAME] [--requests 200] [--clients 4] [--rate 15] [--events 20] [--keep]

On a stack with Directus and PostGraphile (default: stacks/ci.yaml as `bench-rt`), brought up
if need be, an app user is created through Directus and logged in; then, every request through
Nginx over TLS with that user's token:

1. GraphQL query latency: REQUESTS queries (`allNotes { totalCount }`) spread over CLIENTS
   concurrent clients, paced at RATE per second (the edge allows one client address 20/s,
   burst 40), then the same unpaced: p50, p95, max, answered per second and how many Nginx
   refused with 429;
2. notification delay, insert → subscriber: EVENTS notes inserted one by one through Directus's
   REST API while the same user listens, on a GraphQL subscription (PostGraphile, fed by the
   NOTIFY triggers) and on Directus's realtime websocket: p50, p95, max of the time from the
   insert's request to the event's arrival.

The stack is removed afterwards (volumes too) unless --keep or it was already running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import websockets

from ccoas.edge import Edge, directus_subscribe, graphql_subscribe, next_event
from ccoas.engine.local import LocalEngine
from ccoas.plan import Plan
from ccoas.planner import build_plan, load_stack


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def figures(label: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{label:44} p50 {percentile(ms, 50):7.1f} ms   p95 {percentile(ms, 95):7.1f} ms   max {max(ms):7.1f} ms   (n={len(ms)})"


def app_user(engine: LocalEngine, edge: Edge) -> tuple[str, str]:
    """A new Directus user with the provisioned role app-user: its id and access token."""
    admin_password = engine.paths.secret_file("directus", "directus_admin_password").read_text()
    admin_email = engine.plan.service("directus").environment["ADMIN_EMAIL"]
    admin = ok(edge, "POST", "/directus/auth/login", {"email": admin_email, "password": admin_password})["access_token"]
    [role] = ok(edge, "GET", "/directus/roles?filter[name][_eq]=app-user", token=admin)
    email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", uuid.uuid4().hex
    user = ok(edge, "POST", "/directus/users", {"email": email, "password": password, "role": role["id"]}, admin)
    return user["id"], ok(edge, "POST", "/directus/auth/login", {"email": email, "password": password})["access_token"]


def ok(edge: Edge, method: str, path: str, body: object = None, token: str | None = None):
    status, answer = edge.request(method, path, body, token)
    if not 200 <= status < 300:
        raise SystemExit(f"{method} {path}: HTTP {status} {answer}")
    return answer["data"] if isinstance(answer, dict) and "data" in answer else answer


def query_latencies(edge: Edge, token: str, requests: int, clients: int, rate: float) -> tuple[list[float], int, float]:
    """Latencies of the answered queries, the number Nginx refused (429), and the wall time.
    Request n starts no earlier than n/rate seconds in (0: as fast as the clients go)."""
    start = time.monotonic()

    def one(n: int) -> float | None:
        if rate:
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
        began = time.monotonic()
        status, answer = edge.request("POST", "/graphql", {"query": "{ allNotes { totalCount } }"}, token)
        if status == 429:
            return None
        if status != 200 or "errors" in answer:
            raise SystemExit(f"GraphQL query: HTTP {status} {answer}")
        return time.monotonic() - began

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    answered = [r for r in results if r is not None]
    return answered, len(results) - len(answered), time.monotonic() - start


async def graphql_events(edge: Edge, token: str):
    ws = await websockets.connect(edge.websocket_url("/graphql"), ssl=edge.context, subprotocols=["graphql-transport-ws"], open_timeout=20)
    await graphql_subscribe(ws, token, "subscription { notesChanged { op node { body } } }")
    return ws


async def directus_events(edge: Edge, token: str):
    ws = await websockets.connect(edge.websocket_url("/directus/websocket"), ssl=edge.context, open_timeout=20)
    await directus_subscribe(ws, token, "notes", ["body"])
    return ws


async def notification_delays(edge: Edge, token: str, events: int, subscribe) -> list[float]:
    ws = await subscribe(edge, token)
    delays = []
    try:
        for n in range(events):
            marker = f"bench {uuid.uuid4().hex}"
            began = time.monotonic()
            await asyncio.to_thread(ok, edge, "POST", "/directus/items/notes", {"body": marker}, token)
            while True:
                message = await next_event(ws, timeout=10)
                if message is None:
                    raise TimeoutError(f"no event for {marker} within 10 s")
                if marker in json.dumps(message):
                    delays.append(time.monotonic() - began)
                    break
    finally:
        await ws.close()
    return delays


@contextmanager
def edge_stack(stack: str, name: str, keep: bool) -> Iterator[tuple[Plan, LocalEngine]]:
    """``stack`` as ``name`` with Directus, PostGraphile and Nginx, brought up (and purged after,
    unless ``keep`` or it was running before): what the edge benchmarks measure."""
    plan = build_plan(load_stack(stack), name=name)
    if not {"directus", "postgraphile", "nginx"} <= {s.name for s in plan.services}:
        raise SystemExit(f"{stack}: needs Directus, PostGraphile (Hasura cannot run here) and Nginx")
    engine = LocalEngine.connect(plan)
    was_running = all(row.state == "running" for row in engine.status())
    engine.up()
    try:
        yield plan, engine
    finally:
        if not (keep or was_running):
            engine.down(purge=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stack", nargs="?", default="stacks/ci.yaml")
    parser.add_argument("--name", default="bench-rt")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=15.0, help="queries per second in all (0: unpaced); the edge allows the stack file's edge.limits per client address")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    with edge_stack(args.stack, args.name, args.keep) as (plan, engine):
        edge = Edge.of(engine)
        _, token = app_user(engine, edge)
        ok(edge, "POST", "/directus/items/notes", {"body": "warm-up"}, token)
        latencies, refused, wall = query_latencies(edge, token, args.requests, args.clients, args.rate)
        unpaced, unpaced_refused, unpaced_wall = query_latencies(edge, token, args.requests, args.clients, 0)
        graphql = asyncio.run(notification_delays(edge, token, args.events, graphql_events))
        directus = asyncio.run(notification_delays(edge, token, args.events, directus_events))
        print(f"stack {plan.stack}: every request through Nginx over TLS at {edge.origin}, one app user's token")
        pace = f"{args.rate:g}/s" if args.rate else "unpaced"
        print(figures(f"GraphQL query ({args.clients} clients, {pace})", latencies) + f"   {len(latencies) / wall:.0f} answered/s, {refused} refused (429)")
        print(figures(f"GraphQL query ({args.clients} clients, unpaced)", unpaced) + f"   {len(unpaced) / unpaced_wall:.0f} answered/s, {unpaced_refused} refused (429)")
        print(figures("insert (Directus REST) → GraphQL subscriber", graphql))
        print(figures("insert (Directus REST) → Directus websocket", directus))


if __name__ == "__main__":
    main()
