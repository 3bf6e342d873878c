"""Benchmark retrieval: prints figures, asserts nothing.

    python tests/benchmarks/bench_retrieval.py [--rows 3000] [--queries 100] [--keep]

Brings up a small stack of its own (Vault, Postgres, Ollama with the packaged model, the
embedding worker; name ``bench-h13b-…``), then

1. ingest throughput: inserts ``--rows`` generated texts in one transaction (as the tables'
   owner, with the tenant set) and times until the worker has embedded every one (rows/s
   through the worker, Ollama included);
2. query latency: ``app.documents_nearest(v, 10)`` for ``--queries`` query vectors (rows'
   own embeddings, so no Ollama in the loop), p50 and p95 of the SQL's own execution time;
3. recall@10 of the HNSW index against exact search (the same ORDER BY with index scans
   off), averaged over the queries.

The texts are generated: a subject, a verb and an object from small vocabularies, so that
neighbours exist and are not all ties.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from test_embedding_worker import TENANT, insert, missing, psql, sql_ok, stack_document  # noqa: E402

from ccoas.engine.local import LocalEngine  # noqa: E402
from ccoas.planner import build_plan, load_stack  # noqa: E402

SUBJECTS = ["the invoice", "a customer", "the password", "our server", "the report", "a shipment", "the meeting", "my account", "the printer", "a refund"]
VERBS = ["is late", "was reset", "needs approval", "failed again", "was moved", "is missing", "was cancelled", "keeps crashing", "was updated", "is blocked"]
OBJECTS = ["since monday", "for the third time", "in the berlin office", "after the upgrade", "without notice", "during the night", "for team blue", "on the website", "in march", "by accident"]


def texts(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} (#{i})" for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="leave the stack up")
    args = parser.parse_args()
    name = f"bench-h13b-{uuid.uuid4().hex[:6]}"
    path = Path(tempfile.mkdtemp(prefix="ccoas-bench-")) / "bench.yaml"
    path.write_text(yaml.safe_dump(stack_document(name), sort_keys=False))
    engine = LocalEngine.connect(build_plan(load_stack(path)))
    engine.build_images()
    engine.up()
    try:
        rows = texts(args.rows)
        started = time.monotonic()
        for i in range(0, len(rows), 500):
            insert(engine, rows[i : i + 500])
        while missing(engine):
            time.sleep(0.5)
        ingest = time.monotonic() - started
        print(f"ingest: {args.rows} rows embedded in {ingest:.1f} s = {args.rows / ingest:.1f} rows/s (worker + Ollama, insert included)")

        ids = sql_ok(engine, f"SELECT id FROM app.documents ORDER BY random() LIMIT {args.queries}").split()
        latencies, recalls = [], []
        for key in ids:
            vector = f"(SELECT embedding FROM app.documents WHERE id = '{key}')"
            setting = f"SET ROLE app_owner; SET ccoas.tenant_id = '{TENANT}';"
            code, out = psql(engine, f"{setting} EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM app.documents_nearest({vector}, 10)")
            assert code == 0, out
            latencies.append(float(out.split('"Execution Time":')[1].split(",")[0].split("}")[0]))
            approximate = sql_ok(engine, f"{setting} SELECT id FROM app.documents_nearest({vector}, 10)").split()
            exact = sql_ok(
                engine,
                f"{setting} SET enable_indexscan = off; SET enable_bitmapscan = off; "
                f"SELECT id FROM app.documents ORDER BY embedding <=> {vector} LIMIT 10",
            ).split()
            recalls.append(len(set(approximate) & set(exact)) / len(exact))
        print(f"query latency ({len(ids)} queries, k_max 10, SQL execution time): p50 {percentile(latencies, 0.5):.2f} ms, p95 {percentile(latencies, 0.95):.2f} ms")
        print(f"recall@10 of HNSW against exact search: {statistics.mean(recalls):.3f} (min {min(recalls):.1f})")
    finally:
        if not args.keep:
            engine.down(purge=True)


if __name__ == "__main__":
    main()
