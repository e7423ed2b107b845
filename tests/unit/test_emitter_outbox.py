"""The emitter's outbox files: exact round trip, crash leftovers, damage detection, order."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from instrumentation.outbox import (
    MAGIC,
    TMP_PREFIX,
    CorruptRecordError,
    Outbox,
    OutboxRecord,
    decode_record,
    encode_record,
    replay_order,
)


def _record(
    key: str = "run-1:3", payload: bytes = b"\x00\xffpayload", **kw: object
) -> OutboxRecord:
    fields: dict[str, object] = {
        "key": key,
        "attributes": {"flowpoint.run_id": "run-1", "flowpoint.seq": 3, "flowpoint.flag": True},
        "payload": payload,
        "sha256": "ab" * 32,
        "start_time_ns": 1_700_000_000_123_456_789,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    fields.update(kw)
    return OutboxRecord(**fields)  # type: ignore[arg-type]


def test_encode_decode_round_trip_is_exact() -> None:
    payload = bytes(range(256)) * 1000
    rec = _record(payload=payload)
    back = decode_record(encode_record(rec))
    assert back == rec
    assert back.payload == payload
    # bool and int survive as their own types (JSON keeps them apart)
    assert back.attributes["flowpoint.flag"] is True
    assert type(back.attributes["flowpoint.seq"]) is int


@pytest.mark.parametrize("cut", [1, 7, 12, 20, 60, -1, -4, -5])
def test_every_truncation_is_detected(cut: int) -> None:
    data = encode_record(_record())
    with pytest.raises(CorruptRecordError):
        decode_record(data[:cut])


def test_a_flipped_payload_byte_is_detected() -> None:
    data = bytearray(encode_record(_record(payload=b"x" * 100)))
    data[-10] ^= 0x01
    with pytest.raises(CorruptRecordError, match="CRC"):
        decode_record(bytes(data))


def test_not_a_record_is_detected() -> None:
    with pytest.raises(CorruptRecordError, match="magic"):
        decode_record(b'{"key": "x"}' + b"\0" * 40)


def test_replay_order_is_run_then_numeric_seq() -> None:
    keys = ["r1:10", "r1:2", "r0:5", "a:b:1", "r1:1", "plain"]
    assert sorted(keys, key=replay_order) == ["a:b:1", "plain", "r0:5", "r1:1", "r1:2", "r1:10"]


def test_write_read_delete(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob")
    rec = _record()
    name = Outbox.new_name(rec.start_time_ns)
    box.write(name, rec)
    assert box.names() == [name]
    assert box.read(name) == rec
    assert (tmp_path / "ob" / "rejected").is_dir()
    box.delete(name)
    box.delete(name)  # already gone is fine
    assert box.names() == []


def test_write_without_fsync_still_atomic(tmp_path: Path) -> None:
    box = Outbox(tmp_path, fsync=False)
    name = Outbox.new_name(1)
    box.write(name, _record())
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [name]


def test_pending_sorts_and_skips_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    names = {}
    for i, key in enumerate(["r1:10", "r1:2", "r0:7"]):
        names[key] = Outbox.new_name(1000 + i)
        box.write(names[key], _record(key=key, start_time_ns=1000 + i))
    assert [e.name for e in box.pending()] == [names["r0:7"], names["r1:2"], names["r1:10"]]
    left = box.pending(exclude={names["r1:2"]})
    assert [e.name for e in left] == [names["r0:7"], names["r1:10"]]


def test_pending_quarantines_damaged_files_and_removes_unfinished_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path)
    good = Outbox.new_name(1)
    box.write(good, _record(key="r:1"))
    bad = Outbox.new_name(2)
    box.write(bad, _record(key="r:2"))
    path = tmp_path / bad
    path.write_bytes(path.read_bytes()[:5])  # a torn write
    leftover = tmp_path / f"{TMP_PREFIX}{Outbox.new_name(3)}"
    leftover.write_bytes(MAGIC)
    with caplog.at_level(logging.WARNING, logger="instrumentation.outbox"):
        entries = box.pending()
    assert [e.name for e in entries] == [good]
    assert not path.exists()
    assert (tmp_path / "rejected" / bad).is_file()
    note = json.loads((tmp_path / "rejected" / f"{bad}.reason.json").read_text())
    assert "corrupt" in note["reason"]
    assert not leftover.exists()
    assert any("corrupt record" in r.getMessage() for r in caplog.records)


def test_pending_keeps_temp_files_of_writes_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    name = Outbox.new_name(5)
    tmp = tmp_path / f"{TMP_PREFIX}{name}"
    tmp.write_bytes(b"partial")
    assert box.pending(exclude={name}) == []
    assert tmp.exists()


def test_reject_moves_the_file_with_a_reason(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    name = Outbox.new_name(9)
    box.write(name, _record())
    moved = box.reject(name, "HTTP 400: checksum mismatch", status=400)
    assert moved == tmp_path / "rejected" / name
    assert box.names() == []
    assert decode_record(moved.read_bytes()) == _record()
    note = json.loads((tmp_path / "rejected" / f"{name}.reason.json").read_text())
    assert note["status"] == 400 and "checksum" in note["reason"]
    assert box.reject("missing.rec", "gone") is None


def test_missing_directory_has_nothing_pending(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "never-created")
    assert box.pending() == [] and box.names() == []


def test_record_files_are_private(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    name = Outbox.new_name(1)
    box.write(name, _record())
    assert os.stat(tmp_path / name).st_mode & 0o077 == 0
