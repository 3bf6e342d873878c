"""Benchmark realtime for a crowd: N users x M websocket subscribers each; prints figures, asserts nothing.

    python tests/benchmarks/bench_crowd.py [STACK] [--name NAME] [--users 50] [--per-user 20]
        [--writers 10] [--inserts 5] [--gap-ms 100] [--deletes] [--kind graphql|directus|both]
        [--via edge|direct] [--keep]

On a stack with Directus, PostGraphile and Nginx (default: stacks/ci.yaml without Redis, MinIO
and Ollama, as `bench-crowd`), brought up if need be: USERS app users are created through
Directus and logged in; then a Node process (tests/benchmarks/crowd_clients.mjs, with the npm
packages `graphql-ws` and `ws`, installed once under /var/tmp/ccoas-crowd-clients) opens
PER_USER websockets for each user, one subscription each (notes, an owner-only table: row-level
security decides), and WRITERS of the users insert INSERTS notes each, one every GAP_MS
(with --deletes, then delete them). Every event is judged: one of the subscriber's own rows
(delivered: its delay from the write's request), or anyone else's (a leak).

--via edge: through the host listener and Nginx over TLS, each user's sockets from its own
  loopback address (127.0.0.2, 127.0.0.3, ...). Nginx's per-client limits apply to each address
  (the stack file's edge.limits: by default 64 websockets per client address).
--via direct: to the containers' own addresses, from inside the engine user's network
  namespace (podman unshare --rootless-netns): Nginx and its limits are bypassed, said so in
  the output. Use it to measure the GraphQL plane alone.

Printed per kind (graphql = PostGraphile's subscriptions, directus = Directus's realtime
websocket): sockets asked, connected, refused (and why), deliveries expected / got, leaks,
delivery p50 / p95 / p99 / max, and each container's CPU (seconds over the run, from
/proc) and peak resident memory (its processes' RSS, sampled every 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from ccoas.edge import Edge
from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, parse_stack

HERE = Path(__file__).resolve().parent
CLIENTS = Path("/var/tmp/ccoas-crowd-clients")  # readable by the engine user (direct mode runs as it)
PACKAGES = ("graphql-ws@6.4.2", "ws@8")
MEASURED = ("postgres", "postgraphile", "directus", "nginx")


def crowd_stack(path: str) -> dict:
    stack = yaml.safe_load(Path(path).read_text())
    for component in ("redis", "minio", "ollama"):
        if component in stack.get("components", {}):
            stack["components"][component] = {"enabled": False}
    return stack


def client_packages() -> Path:
    """The Node client packages, installed once with npm (the registry's ordinary client)."""
    if not (CLIENTS / "node_modules" / "graphql-ws").is_dir() or not (CLIENTS / "node_modules" / "ws").is_dir():
        CLIENTS.mkdir(parents=True, exist_ok=True)
        (CLIENTS / "package.json").write_text(json.dumps({"name": "ccoas-crowd-clients", "private": True, "type": "module"}))
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", *PACKAGES], cwd=CLIENTS, check=True, stdout=subprocess.DEVNULL)
    shutil.copy(HERE / "crowd_clients.mjs", CLIENTS / "crowd_clients.mjs")
    os.chmod(CLIENTS, 0o755)
    return CLIENTS / "crowd_clients.mjs"


def call(edge: Edge, method: str, path: str, body: object = None, token: str | None = None):
    """A request through the edge, waiting out Nginx's per-client rate limit (429)."""
    for _ in range(60):
        status, answer = edge.request(method, path, body, token, timeout=180)
        if status != 429:
            break
        time.sleep(1)
    if not 200 <= status < 300:
        raise SystemExit(f"{method} {path}: HTTP {status} {answer}")
    return answer["data"] if isinstance(answer, dict) and "data" in answer else answer


def app_users(engine: LocalEngine, edge: Edge, count: int) -> list[dict]:
    """``count`` new Directus users with the provisioned app-user role, created ten to a
    request (each password is hashed), each logged in: [{id, token}]."""
    admin_password = engine.paths.secret_file("directus", "directus_admin_password").read_text()
    admin_email = engine.plan.service("directus").environment["ADMIN_EMAIL"]
    admin = call(edge, "POST", "/directus/auth/login", {"email": admin_email, "password": admin_password})["access_token"]
    [role] = call(edge, "GET", "/directus/roles?filter[name][_eq]=app-user", token=admin)
    batch = uuid.uuid4().hex[:6]
    people = [{"email": f"crowd-{batch}-{n}@example.com", "password": uuid.uuid4().hex, "role": role["id"]} for n in range(count)]
    ids = {}
    for first in range(0, count, 10):
        ids.update({user["email"]: user["id"] for user in call(edge, "POST", "/directus/users", people[first:first + 10], admin)})
    return [
        {"id": ids[p["email"]], "token": call(edge, "POST", "/directus/auth/login", {"email": p["email"], "password": p["password"]})["access_token"]}
        for p in people
    ]


class ContainerUsage:
    """CPU seconds and peak RSS of each measured container's processes, read from /proc."""

    def __init__(self, engine: LocalEngine):
        self.pids = {}
        for name in MEASURED:
            if name in {s.name for s in engine.plan.services}:
                self.pids[name] = engine.client.containers.get(engine.plan.service(name).container_name).attrs["State"]["Pid"]
        self.peak = {name: 0 for name in self.pids}
        self.stop = threading.Event()

    @staticmethod
    def _tree(root: int) -> list[int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry)] = int(fields[1])
        tree, todo = [], [root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(child for child, parent in parents.items() if parent == pid)
        return tree

    def _sample(self) -> dict[str, tuple[float, int]]:
        ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
        usage = {}
        for name, root in self.pids.items():
            cpu, rss = 0.0, 0
            for pid in self._tree(root):
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    # utime, stime, and cutime, cstime: its children already gone (a backend that ended)
                    cpu += sum(int(field) for field in fields[11:15]) / ticks
                    rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                except (OSError, IndexError):
                    continue
            usage[name] = (cpu, rss)
        return usage

    def __enter__(self) -> "ContainerUsage":
        self.start = self._sample()
        self.began = time.monotonic()

        def watch() -> None:
            while not self.stop.wait(0.5):
                for name, (_, rss) in self._sample().items():
                    self.peak[name] = max(self.peak[name], rss)

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.end = self._sample()
        self.wall = time.monotonic() - self.began

    def lines(self) -> list[str]:
        return [
            f"  {name:13} CPU {self.end[name][0] - self.start[name][0]:6.1f} s over {self.wall:.0f} s "
            f"({(self.end[name][0] - self.start[name][0]) / self.wall * 100:4.0f}% of one core)   peak RSS {self.peak[name] / 2**20:6.0f} MiB"
            for name in self.pids
        ]


def container_address(engine: LocalEngine, service: str) -> str:
    networks = engine.client.containers.get(engine.plan.service(service).container_name).attrs["NetworkSettings"]["Networks"]
    return next(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))


def run_crowd(engine: LocalEngine, edge: Edge, script: Path, kind: str, users: list[dict], args) -> dict:
    if args.via == "edge":
        host = edge.origin.removeprefix("https://")
        ws_url = f"wss://{host}/graphql" if kind == "graphql" else f"wss://{host}/directus/websocket"
        write_url = f"{edge.origin}/graphql" if kind == "graphql" else f"{edge.origin}/directus/items/notes"
        ca = str(engine.paths.secret_file("nginx", "nginx_tls_cert"))
        addressed = [{**u, "address": f"127.0.{2 + n // 250}.{2 + n % 250}"} for n, u in enumerate(users)]
    else:
        service = "postgraphile" if kind == "graphql" else "directus"
        address = container_address(engine, service)
        port = engine.plan.service(service).expose[0]
        ws_url = f"ws://{address}:{port}/graphql" if kind == "graphql" else f"ws://{address}:{port}/websocket"
        write_url = f"http://{address}:{port}/graphql" if kind == "graphql" else f"http://{address}:{port}/items/notes"
        ca = None
        addressed = [{**u, "address": None} for u in users]
    config = {
        "kind": kind, "ws_url": ws_url, "write_url": write_url, "ca": ca, "users": addressed,
        "per_user": args.per_user, "writers": args.writers, "inserts_per_writer": args.inserts,
        "insert_gap_ms": args.gap_ms, "delete": args.deletes, "settle_ms": args.settle_ms, "timeout_ms": args.wait_ms,
        "connect_parallel": 50,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=CLIENTS, delete=False) as handle:
        json.dump(config, handle)
    os.chmod(handle.name, 0o644)
    command = ["node", str(script), handle.name]
    if args.via == "direct":
        command = engine.runtime.layout.engine_command("podman", "unshare", "--rootless-netns", *command)
    try:
        with ContainerUsage(engine) as usage:
            done = subprocess.run(command, cwd=CLIENTS, capture_output=True, text=True)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise SystemExit(f"crowd clients failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["usage"] = usage.lines()
    return result


def report(kind: str, result: dict, args) -> None:
    label = {"graphql": "PostGraphile subscriptions (graphql-ws)", "directus": "Directus realtime websocket"}[kind]
    via = "through Nginx (TLS), one loopback address per user" if args.via == "edge" else "DIRECT to the container from the engine user's network namespace: Nginx bypassed"
    ms = lambda v: "-" if v is None else f"{v:.0f} ms"  # noqa: E731
    print(f"\n{label}, {via}")
    print(f"  sockets {result['sockets']} ({args.users} users x {args.per_user}), connected {result['connected']} in {result['connect_seconds']:.1f} s, refused {result['refused']}"
          + (f" {result['refusals']}" if result["refusals"] else "") + (f", closed early {result['closed_early']}" if result["closed_early"] else ""))
    print(f"  writes: {result['inserts']} inserts" + (f" + {result['deletes']} deletes" if result["deletes"] else "") + f" by {args.writers} users"
          + (f", {result['write_error_count']} failed: {result['write_errors']}" if result["write_error_count"] else ""))
    print(f"  deliveries expected {result['expected']}, got {result['got']}, leaks {result['leaks']}" + (f" {result['leak_samples']}" if result["leaks"] else "")
          + (f", unrelated {result['unrelated']}" if result["unrelated"] else ""))
    print(f"  delivery p50 {ms(result['p50_ms'])}   p95 {ms(result['p95_ms'])}   p99 {ms(result['p99_ms'])}   max {ms(result['max_ms'])}"
          + "".join(f"   ({op} n={f['n']}: p50 {ms(f['p50_ms'])}, p95 {ms(f['p95_ms'])})" for op, f in result["by_op"].items() if f["n"]))
    for line in result["usage"]:
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stack", nargs="?", default="stacks/ci.yaml")
    parser.add_argument("--name", default="bench-crowd")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--writers", type=int, default=10)
    parser.add_argument("--inserts", type=int, default=5, help="inserts per writer")
    parser.add_argument("--gap-ms", type=int, default=100, help="between two writes (all writers in turn)")
    parser.add_argument("--deletes", action="store_true", help="then delete every inserted row")
    parser.add_argument("--settle-ms", type=int, default=10000, help="after the last socket connected, before the first write")
    parser.add_argument("--wait-ms", type=int, default=5000, help="after the last write, for late events")
    parser.add_argument("--kind", choices=("graphql", "directus", "both"), default="graphql")
    parser.add_argument("--via", choices=("edge", "direct"), default="edge")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    plan = build_plan(parse_stack(crowd_stack(args.stack), args.stack), name=args.name)
    if not {"directus", "postgraphile", "nginx"} <= {s.name for s in plan.services}:
        raise SystemExit(f"{args.stack}: needs Directus, PostGraphile and Nginx")
    script = client_packages()
    engine = LocalEngine.connect(plan)
    was_running = all(row.state == "running" for row in engine.status())
    engine.up()
    try:
        edge = Edge.of(engine)
        users = app_users(engine, edge, args.users)
        print(f"stack {plan.stack}: {args.users} users created; host {os.cpu_count()} cores shared by the stack and the load generator")
        for kind in (("graphql", "directus") if args.kind == "both" else (args.kind,)):
            report(kind, run_crowd(engine, edge, script, kind, users, args), args)
    finally:
        if not (args.keep or was_running):
            engine.down(purge=True)


if __name__ == "__main__":
    sys.exit(main())
