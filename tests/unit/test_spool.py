"""The durable spool: framing and CRC, torn tails, damaged records, reopen, order, size cap."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint import codec
from checkpoint.errors import ConfigError, CorruptCheckpointError
from checkpoint.models import CheckpointStatus
from checkpoint.store import SealedCheckpoint
from sidecar.spool import (
    MAGIC,
    DeadLetter,
    Spool,
    SpoolFullError,
    decode_frame,
    encode_frame,
)


def record(run_id: str, seq: int, size: int = 200, *, tenant: str = "t1") -> SealedCheckpoint:
    raw = json.dumps({"run_id": run_id, "seq": seq, "pad": "x" * size}).encode()
    sealed = codec.seal(raw)
    return SealedCheckpoint(
        tenant_id=tenant,
        flow_id="flow-a",
        run_id=run_id,
        seq=seq,
        status=CheckpointStatus.PENDING_INPUT if seq % 5 == 4 else CheckpointStatus.ACTIVE,
        schema_version=1,
        sha256=sealed.sha256,
        raw_size=sealed.raw_size,
        blob=os.urandom(size),  # incompressible, so sizes are predictable
        created_at=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        summary={"completed": ["a"], "pending_inputs": ["review"] if seq % 5 == 4 else []},
        trace_id="ab" * 16,
    )


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def opened(spool_dir: Path) -> Iterator[Spool]:
    spool = Spool(spool_dir, max_bytes=10 * 1024 * 1024, segment_bytes=4096, database="db1")
    spool.open()
    try:
        yield spool
    finally:
        spool.close()


def reopen(directory: Path, **kw: object) -> Spool:
    spool = Spool(directory, max_bytes=10 * 1024 * 1024, segment_bytes=4096, **kw)  # type: ignore[arg-type]
    spool.open()
    return spool


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.spool"))


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_frame_round_trips_and_its_crc_covers_every_byte() -> None:
    rec = record("run-1", 3)
    frame = encode_frame(rec, 7, 1234.5)
    assert frame[:4] == MAGIC
    meta, blob = decode_frame(frame)
    assert blob == rec.blob
    assert (meta["run_id"], meta["seq"], meta["epoch"], meta["sha256"]) == (
        "run-1",
        3,
        7,
        rec.sha256,
    )
    for index in (5, 10, len(frame) // 2, len(frame) - 1):  # length, crc, meta, blob
        damaged = bytearray(frame)
        damaged[index] ^= 0x01
        with pytest.raises(CorruptCheckpointError, match="damaged spool record"):
            decode_frame(bytes(damaged))
    with pytest.raises(CorruptCheckpointError):
        decode_frame(frame[:-1])


async def test_append_is_indexed_and_reads_back(opened: Spool) -> None:
    second = record("run-1", 1)
    entries = await opened.append([(record("run-1", 0), 0), (second, 2)])
    await opened.append([(record("run-2", 0), 0)])
    assert opened.records == 3
    assert opened.latest("run-1") is entries[1]
    assert opened.get("run-1", 0) is entries[0]
    assert opened.get("run-1", 5) is None and opened.latest("nope") is None
    loaded = await opened.load(entries[1])
    assert loaded is not None
    assert loaded.blob == second.blob and loaded.sha256 == second.sha256
    assert loaded.summary == second.summary and loaded.created_at == second.created_at
    assert (loaded.run_id, loaded.seq, loaded.trace_id) == ("run-1", 1, "ab" * 16)
    assert entries[1].epoch == 2
    assert opened.pending_bytes == sum(e.size for e in opened) > 0
    assert opened.oldest_age() >= 0


async def test_reopen_rebuilds_the_index_in_order(spool_dir: Path) -> None:
    spool = reopen(spool_dir)
    written = [record(f"run-{i % 3}", i // 3, size=300) for i in range(30)]
    for start in range(0, 30, 4):
        await spool.append([(r, 0) for r in written[start : start + 4]])
    assert len(segments(spool_dir)) > 1  # rotated at segment_bytes
    spool.close()

    again = reopen(spool_dir)
    try:
        assert [(e.run_id, e.seq) for e in again] == [(r.run_id, r.seq) for r in written]
        assert again.latest("run-1") is not None and again.latest("run-1").seq == 9  # type: ignore[union-attr]
        blobs = [(await again.load(e)) for e in again]
        assert [b.blob for b in blobs if b is not None] == [r.blob for r in written]
        # Appends after a reopen go after the old records.
        await again.append([(record("run-9", 0), 0)])
        assert [e.run_id for e in again][-1] == "run-9"
    finally:
        again.close()
    final = reopen(spool_dir)
    try:
        assert final.records == 31
    finally:
        final.close()


async def test_a_torn_tail_is_reported_quarantined_and_truncated(spool_dir: Path) -> None:
    spool = reopen(spool_dir)
    await spool.append([(record("run-1", 0), 0), (record("run-1", 1), 0)])
    spool.close()
    [segment] = segments(spool_dir)
    good_size = segment.stat().st_size
    # A crash mid-append: half of a third record reached the disk.
    partial = encode_frame(record("run-1", 2), 0, 1.0)
    append_bytes(segment, partial[: len(partial) // 2])

    again = reopen(spool_dir)
    try:
        assert again.records == 2
        assert again.torn_tails == 1 and again.corrupt_records == 0
        assert segment.stat().st_size == good_size
        [quarantined] = list(again.quarantine_dir.iterdir())
        assert quarantined.read_bytes() == partial[: len(partial) // 2]
        # The next record lands right after the last good one and survives a reopen.
        await again.append([(record("run-1", 2), 0)])
    finally:
        again.close()
    final = reopen(spool_dir)
    try:
        assert [e.seq for e in final] == [0, 1, 2] and final.torn_tails == 0
    finally:
        final.close()


async def test_a_header_cut_short_is_a_torn_tail_too(spool_dir: Path) -> None:
    spool = reopen(spool_dir)
    await spool.append([(record("run-1", 0), 0)])
    spool.close()
    [segment] = segments(spool_dir)
    append_bytes(segment, MAGIC + b"\x00\x00")
    again = reopen(spool_dir)
    try:
        assert again.records == 1 and again.torn_tails == 1
    finally:
        again.close()


async def test_a_damaged_record_in_the_middle_is_quarantined_never_used(spool_dir: Path) -> None:
    spool = reopen(spool_dir)
    entries = await spool.append([(record("run-1", s), 0) for s in range(3)])
    spool.close()
    [segment] = segments(spool_dir)
    data = bytearray(segment.read_bytes())
    middle = entries[1]
    data[middle.offset + middle.size - 3] ^= 0xFF  # a flipped byte in seq 1's blob
    segment.write_bytes(bytes(data))

    again = reopen(spool_dir)
    try:
        assert [e.seq for e in again] == [0, 2]
        assert again.get("run-1", 1) is None
        assert again.corrupt_records == 1 and again.torn_tails == 0
        [quarantined] = list(again.quarantine_dir.iterdir())
        assert quarantined.stat().st_size == middle.size
        assert segment.stat().st_size == len(data)  # the good record after it is kept
    finally:
        again.close()


async def test_garbage_at_the_end_is_a_damaged_tail(spool_dir: Path) -> None:
    spool = reopen(spool_dir)
    await spool.append([(record("run-1", 0), 0)])
    spool.close()
    [segment] = segments(spool_dir)
    size = segment.stat().st_size
    append_bytes(segment, b"\x00" * 100)
    again = reopen(spool_dir)
    try:
        assert again.records == 1 and again.corrupt_records == 1
        assert segment.stat().st_size == size
    finally:
        again.close()


async def test_a_record_damaged_after_the_scan_is_refused_on_load(opened: Spool) -> None:
    [entry] = await opened.append([(record("run-1", 0), 0)])
    [segment] = segments(opened.directory)
    flip_byte(segment, entry.offset + entry.size - 1)
    with pytest.raises(CorruptCheckpointError):
        await opened.load(entry)


async def test_the_size_cap_refuses_a_batch_whole(spool_dir: Path) -> None:
    spool = Spool(spool_dir, max_bytes=3000, segment_bytes=1024)
    spool.open()
    try:
        await spool.append([(record("run-1", 0, size=1000), 0)])
        await spool.append([(record("run-1", 1, size=1000), 0)])
        with pytest.raises(SpoolFullError, match="spool is full"):
            await spool.append([(record("run-1", 2, size=1000), 0)])
        assert spool.records == 2
        assert spool.disk_bytes <= 3000
        # Draining gives the space back.
        await spool.commit(spool.head(10, 1 << 30))
        assert spool.records == 0 and spool.disk_bytes == 0
        await spool.append([(record("run-1", 2, size=1000), 0)])
        assert spool.records == 1
    finally:
        spool.close()


async def test_commit_retires_the_head_and_deletes_drained_segments(spool_dir: Path) -> None:
    spool = reopen(spool_dir)
    for seq in range(12):
        await spool.append([(record("run-1", seq, size=800), 0)])
    before = segments(spool_dir)
    assert len(before) >= 3
    head = spool.head(max_records=5, max_bytes=1 << 30)
    assert [e.seq for e in head] == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="out of order"):
        await spool.commit(head[1:])
    await spool.commit(head)
    assert spool.records == 7 and spool.get("run-1", 0) is None
    assert segments(spool_dir)[0] != before[0]  # the fully drained first segment is gone
    spool.close()
    # A restart does not replay what was committed (the DRAINED cursor).
    again = reopen(spool_dir)
    try:
        assert [e.seq for e in again] == list(range(5, 12))
        await again.commit(again.head(100, 1 << 30))
        assert again.records == 0 and segments(spool_dir) == []
    finally:
        again.close()


async def test_head_respects_the_byte_budget_but_always_gives_one(opened: Spool) -> None:
    entries = await opened.append([(record("run-1", s, size=500), 0) for s in range(4)])
    size = entries[0].size
    assert all(e.size == size for e in entries)
    assert len(opened.head(10, 1)) == 1
    assert len(opened.head(10, 2 * size + size // 2)) == 2
    assert len(opened.head(3, 1 << 30)) == 3


async def test_dead_letters_are_written_and_fsynced_before_the_commit(opened: Spool) -> None:
    refused = record("run-1", 1)
    entries = await opened.append([(record("run-1", 0), 0), (refused, 0)])
    frame = await opened.read_frame(entries[1])
    assert frame is not None
    await opened.commit(entries, [DeadLetter(entries[1], frame, "conflict", "other sha")])
    assert opened.dead_letters == 1
    lines = (opened.dead_letter_dir / "dead-letter.jsonl").read_text().splitlines()
    doc = json.loads(lines[0])
    assert (doc["run_id"], doc["seq"], doc["reason"]) == ("run-1", 1, "conflict")
    kept = (opened.dead_letter_dir / "dead-letter.spool").read_bytes()
    meta, blob = decode_frame(kept)
    assert meta["seq"] == 1 and blob == refused.blob


def test_a_second_sidecar_cannot_use_the_same_spool(opened: Spool) -> None:
    with pytest.raises(ConfigError, match="in use by another sidecar"):
        Spool(opened.directory, max_bytes=1 << 20).open()


async def test_records_of_another_database_are_refused(spool_dir: Path) -> None:
    spool = reopen(spool_dir, database="db1")
    await spool.append([(record("run-1", 0), 0)])
    spool.close()
    with pytest.raises(ConfigError, match="holds 1 checkpoints of database 'db1'"):
        reopen(spool_dir, database="db2")
    same = reopen(spool_dir, database="db1")
    try:
        await same.commit(same.head(10, 1 << 30))
    finally:
        same.close()
    # Empty now: another database may take the directory over.
    other = reopen(spool_dir, database="db2")
    other.close()


def test_an_unwritable_spool_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create the spool directory"):
        Spool(blocker / "spool", max_bytes=1 << 20).open()
