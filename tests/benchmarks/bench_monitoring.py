"""Benchmark what monitoring costs: prints figures, asserts nothing.

    python tests/benchmarks/bench_monitoring.py [--window S] [--scrape 30s] [--keep]

Brings up a stack of its own (Vault, Postgres, Redis, MinIO, Nginx, monitoring; the stack
file's default 30 s scrape and evaluation intervals unless ``--scrape``), lets it settle, then
over ``--window`` seconds measures, inside the monitoring container (its own PID namespace):

- CPU: the processes' user+system ticks over the window, as a share of one core;
- memory: the processes' resident set at the end (Prometheus, Alertmanager, the exporters);
- disk per day: Prometheus's samples appended per second (its own counter) × 86 400, at the
  bytes per sample its compacted blocks reach (``prometheus_tsdb_compaction_chunk_size_bytes``
  is not yet meaningful in a short window, so the figure uses the 1.3 bytes/sample Prometheus
  documents as typical, and also prints the write-ahead log's measured growth).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from ccoas.engine.local import LocalEngine
from ccoas.metrics import instant_query
from ccoas.planner import CATALOG, build_plan, load_stack

ENABLED = ("vault", "postgres", "redis", "minio", "nginx", "monitoring")
BYTES_PER_SAMPLE = 1.3
"""Prometheus's storage documentation: 1–2 bytes per sample after compression."""
TICKS = 100  # USER_HZ on Linux


def usage(engine: LocalEngine) -> tuple[int, int]:
    """(utime+stime ticks, RSS bytes) summed over every process of the monitoring container."""
    service = engine.plan.service("monitoring")
    script = "for f in /proc/[0-9]*/stat; do cat $f 2>/dev/null; echo; done"
    code, output = engine.runtime.exec(service, ["sh", "-c", script])
    ticks = rss = 0
    for line in output.splitlines():
        if ")" not in line:
            continue
        fields = line.rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
        rss += int(fields[21]) * 4096
    return ticks, rss


def wal_bytes(engine: LocalEngine) -> int:
    code, output = engine.runtime.exec(engine.plan.service("monitoring"), ["du", "-sb", "/prometheus/data/wal"])
    return int(output.split()[0]) if code == 0 else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=int, default=120)
    parser.add_argument("--scrape", default="30s")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    name = f"benchmon-{uuid.uuid4().hex[:4]}"
    stack = {
        "version": 1, "name": name, "environment": "ci", "images": {"source": "local"}, "tls": {"mode": "generate"},
        "components": {
            **{c: {"enabled": False} for c in sorted(CATALOG) if c not in ENABLED},
            "monitoring": {"enabled": True, "scrape_interval": args.scrape, "evaluation_interval": args.scrape},
        },
    }
    path = Path(tempfile.mkdtemp()) / "bench.yaml"
    path.write_text(yaml.safe_dump(stack))
    engine = LocalEngine.connect(build_plan(load_stack(path), name=name))
    try:
        engine.build_images()
        began = time.monotonic()
        engine.up()
        print(f"up with monitoring: {time.monotonic() - began:.0f} s")
        time.sleep(30)  # first scrapes, the head block's first series
        ticks0, _ = usage(engine)
        wal0 = wal_bytes(engine)
        t0 = time.monotonic()
        time.sleep(args.window)
        ticks1, rss = usage(engine)
        wal1 = wal_bytes(engine)
        seconds = time.monotonic() - t0
        series = instant_query(engine.runtime, engine.plan, "prometheus_tsdb_head_series")[0].value
        rate = instant_query(engine.runtime, engine.plan, f"rate(prometheus_tsdb_head_samples_appended_total[{int(args.window)}s])")[0].value
        cpu = (ticks1 - ticks0) / TICKS / seconds
        print(f"scrape/evaluation interval: {args.scrape}; window {seconds:.0f} s; head series: {series:.0f}")
        print(f"cpu: {cpu * 100:.1f}% of one core (all processes of the monitoring container)")
        print(f"memory: {rss / 1024**2:.0f} MiB resident")
        print(f"samples: {rate:.1f}/s -> disk/day ~ {rate * 86400 * BYTES_PER_SAMPLE / 1024**2:.1f} MiB compacted "
              f"({BYTES_PER_SAMPLE} B/sample); write-ahead log grew {(wal1 - wal0) / seconds * 86400 / 1024**2:.1f} MiB/day-equivalent")
    finally:
        if not args.keep:
            engine.down(purge=True)


if __name__ == "__main__":
    main()
