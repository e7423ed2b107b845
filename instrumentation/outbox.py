"""The emitter's outbox: one crash-safe file per checkpoint not yet acknowledged.

A record is written (temp file, write, fsync, rename, directory fsync) before
its first send and removed once the sidecar acknowledged it, so a worker killed
at any moment leaves exactly its unacknowledged records behind. A record the
sidecar refused for good is moved to ``rejected/`` (with a ``.reason.json``
beside it), never silently dropped; so is a file that cannot be read back
(truncated by a crash of the machine, or damaged).

File layout (all integers big-endian)::

    b"FPOBOX1\\n" | u32 meta length | u64 payload length | meta (UTF-8 JSON)
    | payload | u32 CRC-32 of everything before it

The methods do blocking file I/O: the emitter calls them in a worker thread.
An outbox directory belongs to one process at a time; should two share it, a
record may be delivered twice, which the sidecar accepts (same run, seq and
checksum is a success).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import struct
import time
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "AttributeValue",
    "CorruptRecordError",
    "Outbox",
    "OutboxEntry",
    "OutboxRecord",
    "decode_record",
    "encode_record",
    "replay_order",
]

log = logging.getLogger(__name__)

AttributeValue = str | int | bool

MAGIC: Final = b"FPOBOX1\n"
_HEAD = struct.Struct(">IQ")
_CRC = struct.Struct(">I")
_PREFIX_LEN: Final = len(MAGIC) + _HEAD.size
SUFFIX: Final = ".rec"
TMP_PREFIX: Final = ".tmp-"
REJECTED: Final = "rejected"
# A meta document is a few hundred bytes; anything larger means a damaged header.
_MAX_META: Final = 16 * 1024 * 1024


class CorruptRecordError(ValueError):
    """An outbox file is truncated or damaged and cannot be replayed."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """Everything needed to send a checkpoint span again, as it was first emitted."""

    key: str
    attributes: Mapping[str, AttributeValue]
    payload: bytes
    sha256: str
    start_time_ns: int
    traceparent: str | None = None


@dataclass(frozen=True, slots=True, order=True)
class OutboxEntry:
    """A record file found in the outbox, sortable in replay order."""

    order: tuple[str, int, str, int]
    name: str = field(compare=False)


def replay_order(key: str, start_time_ns: int = 0) -> tuple[str, int, str, int]:
    """Sort key of a record: run, then numeric seq, for keys shaped ``run:seq``.

    Keys without a numeric seq sort after the numbered ones of the same prefix.
    """
    run, sep, seq = key.rpartition(":")
    if sep and seq.isdigit():
        return (run, int(seq), key, start_time_ns)
    return (key, 2**63, key, start_time_ns)


def encode_record(record: OutboxRecord) -> bytes:
    """The file bytes of ``record``."""
    meta = json.dumps(
        {
            "key": record.key,
            "sha256": record.sha256,
            "start_time_ns": record.start_time_ns,
            "traceparent": record.traceparent,
            "attributes": dict(record.attributes),
        },
        separators=(",", ":"),
    ).encode()
    head = MAGIC + _HEAD.pack(len(meta), len(record.payload))
    crc = zlib.crc32(record.payload, zlib.crc32(meta, zlib.crc32(head)))
    return b"".join((head, meta, record.payload, _CRC.pack(crc)))


def _parse_meta(meta: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(meta)
    except ValueError as exc:
        raise CorruptRecordError(f"meta is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CorruptRecordError("meta is not a JSON object")
    key, sha, start, parent, attrs = (
        doc.get("key"),
        doc.get("sha256"),
        doc.get("start_time_ns"),
        doc.get("traceparent"),
        doc.get("attributes"),
    )
    if not isinstance(key, str) or not isinstance(sha, str):
        raise CorruptRecordError("meta lacks key or sha256")
    if not isinstance(start, int) or isinstance(start, bool):
        raise CorruptRecordError("meta lacks start_time_ns")
    if parent is not None and not isinstance(parent, str):
        raise CorruptRecordError("meta traceparent is not a string")
    if not isinstance(attrs, dict) or not all(
        isinstance(v, (str, int, bool)) and not isinstance(v, float) for v in attrs.values()
    ):
        raise CorruptRecordError("meta attributes are not a flat map of str/int/bool")
    return doc


def _split_head(data: bytes) -> tuple[int, int]:
    if len(data) < _PREFIX_LEN or not data.startswith(MAGIC):
        raise CorruptRecordError("not an outbox record (bad magic or truncated header)")
    meta_len, payload_len = _HEAD.unpack_from(data, len(MAGIC))
    if meta_len > _MAX_META:
        raise CorruptRecordError(f"implausible meta length {meta_len}")
    return meta_len, payload_len


def decode_record(data: bytes) -> OutboxRecord:
    """Parse and verify file bytes; raises :class:`CorruptRecordError` when damaged."""
    meta_len, payload_len = _split_head(data)
    expected = _PREFIX_LEN + meta_len + payload_len + _CRC.size
    if len(data) != expected:
        raise CorruptRecordError(f"size {len(data)} bytes, expected {expected} (truncated?)")
    body_end = expected - _CRC.size
    (crc,) = _CRC.unpack_from(data, body_end)
    if zlib.crc32(memoryview(data)[:body_end]) != crc:
        raise CorruptRecordError("CRC-32 mismatch")
    meta_end = _PREFIX_LEN + meta_len
    doc = _parse_meta(data[_PREFIX_LEN:meta_end])
    return OutboxRecord(
        key=doc["key"],
        attributes=doc["attributes"],
        payload=data[meta_end:body_end],
        sha256=doc["sha256"],
        start_time_ns=doc["start_time_ns"],
        traceparent=doc["traceparent"],
    )


class Outbox:
    """A directory of unacknowledged checkpoint records (blocking I/O; see module doc)."""

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.rejected_dir = self.directory / REJECTED
        self.fsync = fsync
        self._ready = False

    def _ensure_dirs(self) -> None:
        if not self._ready:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
            self._ready = True

    def _sync_dir(self, directory: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def new_name(start_time_ns: int) -> str:
        """A unique file name; sorting names sorts by emit time."""
        return f"{start_time_ns:020d}-{secrets.token_hex(6)}{SUFFIX}"

    def write(self, name: str, record: OutboxRecord) -> None:
        """Store ``record`` under ``name`` durably (when fsync is on) and atomically."""
        self._ensure_dirs()
        data = encode_record(record)
        tmp = self.directory / f"{TMP_PREFIX}{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        os.rename(tmp, self.directory / name)
        self._sync_dir(self.directory)

    def delete(self, name: str) -> None:
        """Forget an acknowledged record (already gone is fine)."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / name).unlink()
        # No directory fsync: should the unlink be lost in a crash, the replay
        # re-sends an acknowledged record and the sidecar answers "duplicate".

    def reject(self, name: str, reason: str, *, status: int | None = None) -> Path | None:
        """Move a record to ``rejected/`` with a note saying why; returns its new path."""
        self._ensure_dirs()
        target = self.rejected_dir / name
        note = {"reason": reason, "status": status, "rejected_at_ns": time.time_ns()}
        note_path = self.rejected_dir / f"{name}.reason.json"
        note_path.write_text(json.dumps(note, indent=1) + "\n", encoding="utf-8")
        try:
            os.rename(self.directory / name, target)
        except FileNotFoundError:
            return None
        self._sync_dir(self.rejected_dir)
        self._sync_dir(self.directory)
        return target

    def read(self, name: str) -> OutboxRecord:
        """Load and verify one record; raises :class:`CorruptRecordError` when damaged."""
        return decode_record((self.directory / name).read_bytes())

    def _peek_order(self, name: str) -> tuple[str, int, str, int]:
        # Reads only the header and meta, so listing stays cheap with large payloads;
        # the CRC is checked when the record is read in full.
        with open(self.directory / name, "rb") as fh:
            prefix = fh.read(_PREFIX_LEN)
            meta_len, _ = _split_head(prefix)
            meta = fh.read(meta_len)
        if len(meta) != meta_len:
            raise CorruptRecordError("truncated meta")
        doc = _parse_meta(meta)
        return replay_order(doc["key"], doc["start_time_ns"])

    def pending(self, *, exclude: Collection[str] = ()) -> list[OutboxEntry]:
        """Records waiting for an acknowledgement, in replay order.

        ``exclude`` names records (and temp files) in flight in this process.
        Files that cannot be parsed are moved to ``rejected/`` with a warning;
        leftover temp files of a crashed writer are removed (that emit never
        reached its first send, so nobody was told it was saved).
        """
        if not self.directory.is_dir():
            return []
        entries: list[OutboxEntry] = []
        for path in self.directory.iterdir():
            name = path.name
            if name in exclude or not path.is_file():
                continue
            if name.startswith(TMP_PREFIX):
                if name[len(TMP_PREFIX) :] not in exclude:
                    log.warning("outbox: removing unfinished write %s", path)
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                continue
            if not name.endswith(SUFFIX):
                continue
            try:
                entries.append(OutboxEntry(self._peek_order(name), name))
            except (CorruptRecordError, OSError) as exc:
                self.quarantine(name, exc)
        entries.sort()
        return entries

    def quarantine(self, name: str, exc: Exception) -> None:
        """Move an unreadable record to ``rejected/`` and say so in the log."""
        moved = self.reject(name, f"corrupt outbox record: {exc}")
        log.warning("outbox: corrupt record %s moved to %s: %s", name, moved, exc)

    def names(self) -> list[str]:
        """File names of the records currently in the outbox (not rejected)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
