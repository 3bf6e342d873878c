"""Benchmark HTTP reads through the edge from many client addresses: prints figures, asserts nothing.

    python tests/benchmarks/bench_http.py [STACK] [--name NAME] [--clients 12] [--seconds 10] [--keep]

On a stack with Directus, PostGraphile and Nginx behind the edge listener (default:
stacks/ci.yaml as `bench-http`), brought up if need be: an app user is created through
Directus, a few notes and one small file are written as that user; then CLIENTS client
processes, each bound to a loopback address of its own (127.0.1.1, 127.0.1.2, …: different
clients to the edge listener and to Nginx's per-address limits), each on one keep-alive TLS
connection, send requests back to back for SECONDS per kind:

1. GraphQL simple query (PostGraphile): ``{ allNotes(first: 10) { nodes { rowId body } } }``;
2. Directus REST read: ``GET /directus/items/notes?limit=10``;
3. asset read: ``GET /directus/assets/<id>`` (a 4 KiB file the admin uploaded, read with the
   admin's token: app users have no access to files by default), through Directus from MinIO.

Each kind prints requests answered per second, p50/p95/max latency, and how many were refused
(429) or failed. The load generator runs on the same 2 cores as the stack: figures are a floor.
The stack is removed afterwards (volumes too) unless --keep or it was already running.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import ssl
import statistics
import time
import uuid

from ccoas.edge import Edge

GRAPHQL = json.dumps({"query": "{ allNotes(first: 10) { nodes { rowId body } } }"})


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def client(args: tuple[str, str, int, str, str, str, str | None, float, str]) -> tuple[list[float], int, int]:
    """One client: its own source address, one keep-alive connection, requests back to back.
    Latencies of answered requests (s), refused (429), failed."""
    source, host, port, cafile, method, path, body, seconds, token = args
    context = ssl.create_default_context(cafile=cafile)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies, refused, failed = [], 0, 0
    connection = http.client.HTTPSConnection(host, port, source_address=(source, 0), context=context, timeout=30)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            failed += 1
            connection.close()
            connection = http.client.HTTPSConnection(host, port, source_address=(source, 0), context=context, timeout=30)
            continue
        if response.status == 200:
            latencies.append(time.monotonic() - began)
        elif response.status == 429:
            refused += 1
        else:
            failed += 1
    connection.close()
    return latencies, refused, failed


def run(label: str, edge: Edge, cafile: str, clients: int, seconds: float, token: str, method: str, path: str, body: str | None = None) -> None:
    host, port = edge.origin.removeprefix("https://").rsplit(":", 1)
    jobs = [(f"127.0.1.{n + 1}", host, int(port), cafile, method, path, body, seconds, token) for n in range(clients)]
    with multiprocessing.Pool(clients) as pool:
        results = pool.map(client, jobs)
    latencies = [s * 1000 for r in results for s in r[0]]
    refused, failed = sum(r[1] for r in results), sum(r[2] for r in results)
    if not latencies:
        print(f"{label:34} nothing answered ({refused} refused, {failed} failed)")
        return
    print(
        f"{label:34} {len(latencies) / seconds:7.0f} req/s   p50 {percentile(latencies, 50):6.1f} ms   "
        f"p95 {percentile(latencies, 95):6.1f} ms   max {max(latencies):7.1f} ms   "
        f"({clients} client addresses, {refused} refused, {failed} failed)"
    )


def upload(edge: Edge, token: str) -> str:
    """A 4 KiB file uploaded through Directus as the user: its id."""
    host, port = edge.origin.removeprefix("https://").rsplit(":", 1)
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + os.urandom(4096) + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPSConnection(host, int(port), context=edge.context, timeout=30)
    connection.request("POST", "/directus/files", body=body, headers={"Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status != 200:
        raise SystemExit(f"upload: HTTP {response.status} {answer}")
    return answer["data"]["id"]


def main() -> None:
    from bench_realtime import app_user, edge_stack, ok  # beside this script

    parser = argparse.ArgumentParser()
    parser.add_argument("stack", nargs="?", default="stacks/ci.yaml")
    parser.add_argument("--name", default="bench-http")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    with edge_stack(args.stack, args.name, args.keep) as (plan, engine):
        edge = Edge.of(engine)
        _, token = app_user(engine, edge)
        for n in range(10):
            ok(edge, "POST", "/directus/items/notes", {"body": f"bench note {n}"}, token)
        admin_password = engine.paths.secret_file("directus", "directus_admin_password").read_text()
        admin_email = plan.service("directus").environment["ADMIN_EMAIL"]
        admin = ok(edge, "POST", "/directus/auth/login", {"email": admin_email, "password": admin_password})["access_token"]
        asset = upload(edge, admin)
        cafile = str(engine.paths.secret_file("nginx", "nginx_tls_cert"))
        limits = plan.edge.limits
        print(
            f"stack {plan.stack}: through the edge ({plan.edge.listener.kind} listener) at {edge.origin}; per client address "
            f"{limits.requests_per_second} req/s, burst {limits.burst}; {os.cpu_count()} CPUs shared with the load generator, "
            f"load average {os.getloadavg()[0]:.1f} before"
        )
        run("GraphQL simple query", edge, cafile, args.clients, args.seconds, token, "POST", "/graphql", GRAPHQL)
        run("Directus REST read (10 items)", edge, cafile, args.clients, args.seconds, token, "GET", "/directus/items/notes?limit=10")
        run("asset read (4 KiB, Directus)", edge, cafile, args.clients, args.seconds, admin, "GET", f"/directus/assets/{asset}")


if __name__ == "__main__":
    main()
