"""PostgresStore specifics on a real PostgreSQL: migrations, schema, batch writes, clocks.

The generic store behaviour is in tests/conformance (run with ``-k postgres``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from checkpoint import CheckpointStatus, FlowCheckpoint, NodeState, NodeStatus, PendingInput
from checkpoint.errors import (
    CheckpointRefusedError,
    InvalidIdError,
    SeqConflictError,
    StaleEpochError,
    StoreUnavailableError,
    TenantMismatchError,
)
from checkpoint.store import SealedCheckpoint
from checkpoint.stores.postgres import PostgresStore
from checkpoint.stores.postgres.migrate import apply_migrations, load_migrations, migrate
from tests.fixtures.postgres import PgServer, database_name, run_async

REPO = Path(__file__).resolve().parents[2]
BASE_TIME = dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def make_cp(
    run_id: str,
    seq: int,
    *,
    tenant_id: str = "t1",
    status: CheckpointStatus = CheckpointStatus.ACTIVE,
    note: str = "",
    pending: tuple[str, ...] = (),
) -> FlowCheckpoint:
    """A checkpoint; the same arguments always give the same bytes (and checksum)."""
    return FlowCheckpoint(
        tenant_id=tenant_id,
        flow_id="flow-pg",
        run_id=run_id,
        seq=seq,
        status=CheckpointStatus.PENDING_INPUT if pending else status,
        node_states={
            "a": NodeState(node_id="a", node_type="FunctionNode", status=NodeStatus.SUCCEEDED)
        },
        pending_inputs=[PendingInput(path=p, prompt="?", requested_at=BASE_TIME) for p in pending],
        metadata={"note": note} if note else {},
        created_at=BASE_TIME + dt.timedelta(seconds=seq),
    )


def seal(store: PostgresStore, cp: FlowCheckpoint) -> SealedCheckpoint:
    return store.seal_checkpoint(cp)


async def fetch_all(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# -- migrations -----------------------------------------------------------------------------


async def test_migrations_run_twice_is_a_noop(pg_server: PgServer) -> None:
    dsn = await pg_server.create_database(template="template1")
    name = database_name(dsn)
    try:
        first = await migrate(dsn)
        assert [m.version for m in first] == [m.version for m in load_migrations()]
        assert await migrate(dsn) == []
        rows = await fetch_all(dsn, "SELECT version, name FROM flowpoint_migrations ORDER BY 1")
        assert [(r["version"], r["name"]) for r in rows] == [
            (m.version, m.name) for m in load_migrations()
        ]
    finally:
        await pg_server.drop_database(name)


async def test_concurrent_migrations_on_two_connections_are_safe(pg_server: PgServer) -> None:
    dsn = await pg_server.create_database(template="template1")
    name = database_name(dsn)
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        applied = sorted(m.version for result in results for m in result)
        # Every migration applied exactly once, by whichever connection got the lock first.
        assert applied == [m.version for m in load_migrations()]
        count = await conns[0].fetchval("SELECT count(*) FROM flowpoint_migrations")
        assert count == len(load_migrations())
    finally:
        for conn in conns:
            await conn.close()
        await pg_server.drop_database(name)


def test_concurrent_migrate_commands_from_two_processes(pg_server: PgServer) -> None:
    dsn = run_async(lambda: pg_server.create_database(template="template1"))
    name = database_name(dsn)
    try:
        env = {**os.environ, "FLOWPOINT_DATABASE_URL": dsn}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "flowpoint_cli", "migrate"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outputs.append(out)
        applied_lines = [line for out in outputs for line in out.splitlines() if "applied" in line]
        assert len(applied_lines) == len(load_migrations())
        rows = run_async(lambda: fetch_all(dsn, "SELECT version FROM flowpoint_migrations"))
        assert len(rows) == len(load_migrations())
    finally:
        run_async(lambda: pg_server.drop_database(name))


def test_migrate_command_reports_unreachable_database_clearly() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowpoint_cli",
            "migrate",
            "--database-url",
            "postgresql://postgres@127.0.0.1:1/nothing",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "cannot connect to PostgreSQL" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- schema ---------------------------------------------------------------------------------


async def test_payload_column_uses_external_storage(pg_dsn: str) -> None:
    rows = await fetch_all(
        pg_dsn,
        "SELECT attstorage::text AS attstorage FROM pg_attribute "
        "WHERE attrelid = 'checkpoints'::regclass AND attname = 'payload'",
    )
    assert [r["attstorage"] for r in rows] == ["e"]


async def test_large_payload_is_stored_out_of_line_uncompressed(
    postgres_store: PostgresStore, pg_dsn: str
) -> None:
    # Random bytes do not compress: the stored payload must still be kept as is (no pglz).
    cp = make_cp("big-1", 0).model_copy(update={"metadata": {"blob": os.urandom(200_000)}})
    await postgres_store.put(cp)
    rows = await fetch_all(
        pg_dsn,
        "SELECT pg_column_size(payload) AS on_disk, octet_length(payload) AS size "
        "FROM checkpoints WHERE run_id = 'big-1'",
    )
    assert rows[0]["on_disk"] == rows[0]["size"]
    assert await postgres_store.get("big-1") == cp


# -- batch writes ---------------------------------------------------------------------------


async def test_put_sealed_many_mixed_outcomes_in_one_batch(
    postgres_store: PostgresStore, pg_dsn: str
) -> None:
    store = postgres_store
    # Before: run "old" at seq 0 and 1, claimed (epoch 1); run "ten" of tenant t1.
    await store.put(make_cp("old", 0))
    await store.put(make_cp("old", 1))
    claim = await store.claim("old", "w1", 30)
    assert claim.epoch == 1
    await store.put(make_cp("ten", 0))

    new_a = seal(store, make_cp("new", 0))
    new_a_again = seal(store, make_cp("new", 0))
    new_a_other = seal(store, make_cp("new", 0, note="other"))
    new_b = seal(store, make_cp("new", 1, pending=("review",)))
    old_dup = seal(store, make_cp("old", 1))
    old_conflict = seal(store, make_cp("old", 1, note="changed"))
    old_stale = seal(store, make_cp("old", 2))
    old_ok = seal(store, make_cp("old", 3, status=CheckpointStatus.COMPLETED))
    foreign = seal(store, make_cp("ten", 1, tenant_id="t2"))
    bad = seal(store, make_cp("okid", 0))
    bad.run_id = "../etc"
    fenced_new = seal(store, make_cp("fenced", 0))

    results = await store.put_sealed_many(
        [
            (new_a, 0),
            (old_dup, 0),  # already stored: a duplicate even with an old epoch
            (new_a_again, 0),  # same key, same checksum, same batch
            (old_conflict, 1),
            (old_stale, 0),  # claimed run, epoch 0 is stale
            (new_a_other, 0),  # same key, other checksum, same batch
            (foreign, 0),
            (bad, 0),
            (old_ok, 1),
            (new_b, 0),
            (fenced_new, 3),  # a new run starts at epoch 0
        ]
    )
    assert results[0] == "stored"
    assert results[1] == "duplicate"
    assert results[2] == "duplicate"
    assert isinstance(results[3], SeqConflictError)
    assert isinstance(results[4], StaleEpochError)
    assert "epoch 1" in str(results[4])
    assert isinstance(results[5], SeqConflictError)
    assert isinstance(results[6], TenantMismatchError)
    assert isinstance(results[7], InvalidIdError)
    assert results[8] == "stored"
    assert results[9] == "stored"
    assert isinstance(results[10], StaleEpochError)
    assert len(results) == 11

    # Refused items left nothing behind; accepted ones are all there.
    assert await store.get("new", 0) == make_cp("new", 0)
    stored = await fetch_all(
        pg_dsn, "SELECT run_id, seq, sha256 FROM checkpoints ORDER BY run_id, seq"
    )
    assert [(r["run_id"], r["seq"]) for r in stored] == [
        ("new", 0),
        ("new", 1),
        ("old", 0),
        ("old", 1),
        ("old", 3),
        ("ten", 0),
    ]
    assert {r["sha256"] for r in stored if r["run_id"] == "new" and r["seq"] == 0} == {new_a.sha256}
    assert await store.get_run("fenced") is None  # no placeholder row survives

    new_run = await store.get_run("new")
    assert new_run is not None
    assert (new_run.latest_seq, new_run.status) == (1, CheckpointStatus.PENDING_INPUT)
    assert new_run.pending_inputs == ["review"]
    old_run = await store.get_run("old")
    assert old_run is not None
    assert (old_run.latest_seq, old_run.status, old_run.epoch) == (
        3,
        CheckpointStatus.COMPLETED,
        1,
    )
    ten_run = await store.get_run("ten")
    assert ten_run is not None and ten_run.tenant_id == "t1" and ten_run.latest_seq == 0


def unstorable_cp(run_id: str, seq: int, *, node_id: str) -> FlowCheckpoint:
    """A valid checkpoint whose completed node id PostgreSQL's text cannot hold."""
    cp = make_cp(run_id, seq)
    state = NodeState(node_id=node_id, node_type="FunctionNode", status=NodeStatus.SUCCEEDED)
    return cp.model_copy(update={"node_states": {node_id: state}})


async def test_a_record_postgresql_cannot_hold_is_refused_alone(
    postgres_store: PostgresStore, pg_dsn: str
) -> None:
    store = postgres_store
    batch = [
        seal(store, make_cp("fine-a", 0)),
        seal(store, unstorable_cp("nul", 0, node_id="a\x00b")),
        seal(store, make_cp("fine-a", 1)),
        seal(store, make_cp("fine-b", 0, pending=("review",))),
        seal(store, make_cp("nul-path", 0, pending=("re\x00view",))),
        seal(store, make_cp("fine-b", 1, status=CheckpointStatus.COMPLETED)),
    ]
    results = await store.put_sealed_many([(record, 0) for record in batch])

    assert [r if isinstance(r, str) else type(r) for r in results] == [
        "stored",
        CheckpointRefusedError,
        "stored",
        "stored",
        CheckpointRefusedError,
        "stored",
    ]
    assert "nul#0" in str(results[1]) and "UntranslatableCharacter" in str(results[1])
    stored = await fetch_all(pg_dsn, "SELECT run_id, seq FROM checkpoints ORDER BY 1, 2")
    assert [(r["run_id"], r["seq"]) for r in stored] == [
        ("fine-a", 0),
        ("fine-a", 1),
        ("fine-b", 0),
        ("fine-b", 1),
    ]
    run_b = await store.get_run("fine-b")
    assert run_b is not None
    assert (run_b.latest_seq, run_b.status) == (1, CheckpointStatus.COMPLETED)
    assert await store.get_run("nul") is None and await store.get_run("nul-path") is None

    # Alone (the single-record road) it is refused the same way, and stays refused.
    with pytest.raises(CheckpointRefusedError, match="NUL"):
        await store.put(unstorable_cp("nul", 0, node_id="a\x00b"))
    assert await store.put(make_cp("nul", 0)) == "stored"


async def test_put_sealed_many_out_of_order_keeps_status_of_max_seq(
    postgres_store: PostgresStore,
) -> None:
    store = postgres_store
    records = [
        seal(store, make_cp("ooo", 2, status=CheckpointStatus.FAILED)),
        seal(store, make_cp("ooo", 0)),
        seal(store, make_cp("ooo", 1, pending=("x",))),
    ]
    assert await store.put_sealed_many([(r, 0) for r in records]) == ["stored"] * 3
    run = await store.get_run("ooo")
    assert run is not None
    assert (run.latest_seq, run.status, run.pending_inputs) == (2, CheckpointStatus.FAILED, [])
    # A lower seq arriving later does not move latest or status.
    assert await store.put(make_cp("ooo", 1, pending=("x",))) == "duplicate"
    [late] = await store.put_sealed_many([(seal(store, make_cp("ooo", 3)), 0)])
    assert late == "stored"
    run = await store.get_run("ooo")
    assert run is not None and (run.latest_seq, run.status) == (3, CheckpointStatus.ACTIVE)
    assert await store.put_sealed_many([]) == []


async def test_put_sealed_many_new_run_mixed_tenants_first_item_owns_it(
    postgres_store: PostgresStore,
) -> None:
    store = postgres_store
    results = await store.put_sealed_many(
        [
            (seal(store, make_cp("mix", 0, tenant_id="t2")), 0),
            (seal(store, make_cp("mix", 1, tenant_id="t1")), 0),
        ]
    )
    assert results[0] == "stored"
    assert isinstance(results[1], TenantMismatchError)
    run = await store.get_run("mix")
    assert run is not None and run.tenant_id == "t2" and run.latest_seq == 0


async def test_a_batch_over_the_size_cap_is_split_with_the_same_outcomes(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from checkpoint.stores.postgres import store as store_module

    store = postgres_store
    blob_size = len(seal(store, make_cp("split", 0)).blob)
    monkeypatch.setattr(store_module, "_MAX_BATCH_BYTES", blob_size * 2)
    items = [
        (seal(store, make_cp("split", 0)), 0),
        (seal(store, make_cp("split", 1)), 0),
        (seal(store, make_cp("split", 0)), 0),  # in the next chunk: still a duplicate
        (seal(store, make_cp("split", 1, note="x")), 0),  # and this a conflict
        (seal(store, make_cp("split", 2)), 0),
    ]
    results = await store.put_sealed_many(items)
    assert results[:3] == ["stored", "stored", "duplicate"]
    assert isinstance(results[3], SeqConflictError)
    assert results[4] == "stored"
    run = await store.get_run("split")
    assert run is not None and run.latest_seq == 2


async def test_concurrent_overlapping_batches_do_not_deadlock(
    postgres_store: PostgresStore,
) -> None:
    store = postgres_store
    runs = [f"c{i}" for i in range(8)]

    async def writer(k: int) -> list[object]:
        order = runs if k % 2 == 0 else list(reversed(runs))
        batch = [(seal(store, make_cp(r, k)), 0) for r in order]
        return list(await store.put_sealed_many(batch))

    results = await asyncio.gather(*(writer(k) for k in range(12)))
    assert all(outcome == "stored" for batch in results for outcome in batch)
    for run_id in runs:
        run = await store.get_run(run_id)
        assert run is not None and run.latest_seq == 11
        assert len(await store.list_checkpoints(run_id, limit=100)) == 12


async def test_put_sealed_many_with_large_payloads(postgres_store: PostgresStore) -> None:
    store = postgres_store
    cps = [
        make_cp(f"lp{i}", 0).model_copy(update={"metadata": {"blob": os.urandom(300_000)}})
        for i in range(6)
    ]
    results = await store.put_sealed_many([(seal(store, cp), 0) for cp in cps])
    assert results == ["stored"] * 6
    for cp in cps:
        assert await store.get(cp.run_id) == cp


# -- clocks and time zones ------------------------------------------------------------------


async def test_timestamps_are_aware_utc_whatever_the_session_time_zone(
    pg_dsn: str,
) -> None:
    database = database_name(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"ALTER DATABASE \"{database}\" SET timezone = 'Asia/Kolkata'")
    finally:
        await conn.close()
    store = PostgresStore(pg_dsn)
    try:
        created = dt.datetime(
            2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=2))
        )
        cp = make_cp("tz", 0).model_copy(update={"created_at": created.astimezone(dt.UTC)})
        await store.put(cp)
        claim = await store.claim("tz", "w", 60)
        record = await store.submit_input("tz", "review", {"ok": True})
        run = await store.get_run("tz")
        [summary] = await store.list_checkpoints("tz")
        page = await store.list_runs()
        assert run is not None
        stamps = [
            run.created_at,
            run.updated_at,
            claim.lease_expires_at,
            record.submitted_at,
            summary.created_at,
            page.runs[0].updated_at,
            (await store.list_inputs("tz"))[0].submitted_at,
        ]
        for stamp in stamps:
            assert stamp.tzinfo is not None and stamp.utcoffset() == dt.timedelta(0)
        assert summary.created_at == created  # exact, microseconds included
        loaded = await store.get("tz")
        assert loaded is not None and loaded.created_at == created
    finally:
        await store.close()


async def test_lease_is_computed_with_the_database_clock(
    postgres_store: PostgresStore, pg_dsn: str
) -> None:
    await postgres_store.put(make_cp("lease", 0))
    claim = await postgres_store.claim("lease", "w", 120)
    rows = await fetch_all(
        pg_dsn,
        "SELECT lease_expires_at, lease_expires_at - now() > interval '100 seconds' AS ahead "
        "FROM runs WHERE run_id = 'lease'",
    )
    assert rows[0]["lease_expires_at"] == claim.lease_expires_at
    assert rows[0]["ahead"] is True


# -- human input encoding -------------------------------------------------------------------


async def test_answers_round_trip_exactly(postgres_store: PostgresStore) -> None:
    await postgres_store.put(make_cp("ans", 0, pending=("q",)))
    answer = {"big": 1e16, "neg0": -0.0, "nul": "a\x00b", "bytes": b"\x00\x01", "n": 10**30}
    record = await postgres_store.submit_input("ans", "q", answer)
    [listed] = await postgres_store.list_inputs("ans")
    for got in (record.answer, listed.answer):
        assert got == answer
        assert type(got["big"]) is float and str(got["neg0"]) == "-0.0"


# -- availability ---------------------------------------------------------------------------


async def test_lazy_open_ping_and_double_close(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, min_size=0, max_size=2)
    await store.ping()  # opens on first use
    await store.put(make_cp("lazy", 0))
    assert (await store.get_run("lazy")) is not None
    await store.close()
    await store.close()


async def test_unreachable_database_is_store_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailableError):
        await store.ping()
    await store.close()


async def test_server_crash_then_restart_keeps_committed_data_and_store_recovers(
    pg_server: PgServer, pg_dsn: str
) -> None:
    if not pg_server.is_embedded:
        pytest.skip("restarting PostgreSQL needs the embedded server, not an external one")
    # Flush what earlier tests wrote, so crash recovery replays only this test's WAL.
    await fetch_all(pg_server.dsn, "CHECKPOINT")
    store = PostgresStore(pg_dsn, min_size=2, max_size=2)
    try:
        cp = make_cp("crash", 0)
        assert await store.put(cp) == "stored"
        await asyncio.to_thread(pg_server.stop, "immediate")  # like a power cut of the server
        with pytest.raises(StoreUnavailableError):
            await store.ping()
        await asyncio.to_thread(pg_server.start)
        # Pooled connections died with the server; the store replaces them.
        assert await store.get("crash") == cp
        assert await store.put(make_cp("crash", 1)) == "stored"
    finally:
        if not pg_server.embedded or not pg_server.embedded.running:
            await asyncio.to_thread(pg_server.start)
        await store.close()


async def test_store_ids_are_validated_before_any_sql(postgres_store: PostgresStore) -> None:
    for bad in ["x'; DROP TABLE runs; --", "../x", ""]:
        with pytest.raises(InvalidIdError):
            await postgres_store.get_run(bad)
    rows = await postgres_store.list_runs(limit=5)
    assert rows.runs == []


def test_one_store_serves_successive_event_loops(pg_dsn: str) -> None:
    # run_sync callers start a new loop per call; a pool is bound to the loop that made it.
    store = PostgresStore(pg_dsn)
    assert asyncio.run(store.put(make_cp("loops", 0))) == "stored"
    assert asyncio.run(store.put(make_cp("loops", 1))) == "stored"
    run = asyncio.run(store.get_run("loops"))
    assert run is not None and run.latest_seq == 1
    asyncio.run(store.close())


async def test_an_operation_that_loses_its_connection_is_retried(
    postgres_store: PostgresStore,
) -> None:
    calls: list[int] = []

    async def flaky(conn: asyncpg.Connection) -> int:
        calls.append(1)
        if len(calls) == 1:
            # What asyncpg raises when the server drops the session mid-operation.
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
        value: int = await conn.fetchval("SELECT 42")
        return value

    assert await postgres_store._run("test", flaky) == 42
    assert len(calls) == 2


async def test_an_unsafe_operation_is_not_retried_after_a_lost_connection(
    postgres_store: PostgresStore,
) -> None:
    calls: list[int] = []

    async def lost(conn: asyncpg.Connection) -> int:
        calls.append(1)
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    with pytest.raises(StoreUnavailableError):
        await postgres_store._run("test", lost, retry=False)
    assert len(calls) == 1
