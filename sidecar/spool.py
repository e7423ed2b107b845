"""The durable local spool: checkpoints acknowledged while PostgreSQL cannot take them.

Layout of the spool directory::

    LOCK                      flock'ed by the one sidecar that uses the directory
    META                      {"format": 1, "database": "<name>"}: whose checkpoints these are
    DRAINED                   {"segment": n, "offset": o}: everything before is in PostgreSQL
    segment-0000000000000001.spool, ...   append-only segment files, replayed in order
    quarantine/               bytes of damaged records (never used), for an operator
    dead-letter/              records PostgreSQL refused on replay (conflict, stale epoch)

Each record in a segment is framed as::

    magic "FPS1" | u32 length of body | u32 CRC-32 of (length, body) | body
    body = u32 length of meta | meta (JSON) | zstd blob (as stored in PostgreSQL)

A batch of records is written with one ``write`` and made durable with one ``fdatasync``
before :meth:`Spool.append` returns, so the HTTP answer that follows is only sent for
records on disk. The total size is bounded (``max_bytes``): a full spool raises
:class:`SpoolFullError` (a 503 for the client, whose outbox keeps the data).

On :meth:`Spool.open` every segment is scanned: each record's length and CRC are checked.
A damaged tail (a crash mid-append, or garbage after the last good record) is reported,
copied to ``quarantine/`` and truncated away; a damaged record in the middle (a good one
follows it) is reported and copied to ``quarantine/``, and never used. The records that
remain are indexed in memory by ``(run_id, seq)``, so reads can check the spool first.

Only the event loop thread touches the index; file I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import itertools
import json
import logging
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from checkpoint.errors import ConfigError, CorruptCheckpointError, StoreUnavailableError
from checkpoint.models import CheckpointStatus
from checkpoint.store import CheckpointSummary, SealedCheckpoint

__all__ = [
    "MAGIC",
    "DeadLetter",
    "ScanReport",
    "Spool",
    "SpoolEntry",
    "SpoolFullError",
    "decode_frame",
    "encode_frame",
]

log = logging.getLogger("flowpoint.sidecar.spool")

MAGIC: Final = b"FPS1"
FORMAT: Final = 1
_HEAD: Final = struct.Struct(">4sII")
_U32: Final = struct.Struct(">I")
_SEGMENT_PREFIX: Final = "segment-"
_SEGMENT_SUFFIX: Final = ".spool"
_MAX_BODY: Final = 0x7FFF_FFFF
_INLINE_READ: Final = 256 * 1024
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024


class SpoolFullError(StoreUnavailableError):
    """The spool holds ``max_bytes`` already: the checkpoint is not durable, retry later."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Damaged(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "torn" (incomplete) or "corrupt" (complete but wrong)
        self.detail = detail


@dataclass(slots=True, eq=False)
class SpoolEntry:
    """One record waiting in the spool: where it is, and its index fields (no blob)."""

    segment: int
    offset: int
    size: int
    run_id: str
    seq: int
    tenant_id: str
    flow_id: str
    status: str
    schema_version: int
    sha256: str
    raw_size: int
    stored_size: int
    created_at: dt.datetime
    summary: dict[str, Any]
    trace_id: str | None
    epoch: int
    spooled_at: float

    @property
    def key(self) -> tuple[str, int]:
        return (self.run_id, self.seq)

    def to_summary(self) -> CheckpointSummary:
        return CheckpointSummary(
            run_id=self.run_id,
            seq=self.seq,
            status=CheckpointStatus(self.status),
            created_at=self.created_at,
            sha256=self.sha256,
            raw_size=self.raw_size,
            stored_size=self.stored_size,
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A spooled record PostgreSQL refused on replay, and why."""

    entry: SpoolEntry
    frame: bytes
    reason: str
    detail: str


@dataclass(slots=True)
class ScanReport:
    """What :meth:`Spool.open` found."""

    segments: int = 0
    records: int = 0
    torn_tails: int = 0
    corrupt_records: int = 0
    quarantined_bytes: int = 0
    removed_segments: int = 0
    problems: list[str] = field(default_factory=list)


# -- framing ------------------------------------------------------------------------------


def _meta_of(record: SealedCheckpoint, epoch: int, spooled_at: float) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "seq": record.seq,
        "tenant_id": record.tenant_id,
        "flow_id": record.flow_id,
        "status": str(record.status),
        "schema_version": record.schema_version,
        "sha256": record.sha256,
        "raw_size": record.raw_size,
        "created_at": record.created_at.isoformat(),
        "summary": record.summary,
        "trace_id": record.trace_id,
        "epoch": epoch,
        "spooled_at": spooled_at,
    }


def encode_frame(record: SealedCheckpoint, epoch: int, spooled_at: float) -> bytes:
    """One framed spool record for ``record`` written with claim ``epoch``."""
    meta = json.dumps(
        _meta_of(record, epoch, spooled_at), separators=(",", ":"), sort_keys=True
    ).encode("utf-8")
    body = b"".join((_U32.pack(len(meta)), meta, record.blob))
    if len(body) > _MAX_BODY:
        raise SpoolFullError(f"a checkpoint of {len(body)} bytes is too large for the spool")
    length = _U32.pack(len(body))
    return _HEAD.pack(MAGIC, len(body), zlib.crc32(body, zlib.crc32(length))) + body


def _check_frame(buf: bytes | memoryview, offset: int) -> int:
    """The size of the valid frame at ``offset``; raises :class:`_Damaged` otherwise."""
    available = len(buf) - offset
    if available < _HEAD.size:
        raise _Damaged("torn", f"{available} bytes left, a record header needs {_HEAD.size}")
    magic, length, crc = _HEAD.unpack_from(buf, offset)
    if magic != MAGIC:
        raise _Damaged("corrupt", f"bad magic {bytes(magic)!r}")
    if length < _U32.size or length > _MAX_BODY:
        raise _Damaged("corrupt", f"impossible record length {length}")
    end = offset + _HEAD.size + length
    if end > len(buf):
        raise _Damaged("torn", f"the record needs {length} body bytes, {available} are left")
    body = buf[offset + _HEAD.size : end]
    if zlib.crc32(body, zlib.crc32(_U32.pack(length))) != crc:
        raise _Damaged("corrupt", "CRC mismatch")
    return int(_HEAD.size + length)


def decode_frame(frame: bytes | memoryview) -> tuple[dict[str, Any], bytes]:
    """``(meta, blob)`` of one complete frame; raises :class:`CorruptCheckpointError`."""
    try:
        size = _check_frame(frame, 0)
    except _Damaged as exc:
        raise CorruptCheckpointError(f"damaged spool record: {exc.detail}") from None
    body = memoryview(frame)[_HEAD.size : size]
    (meta_len,) = _U32.unpack_from(body, 0)
    if meta_len > len(body) - _U32.size:
        raise CorruptCheckpointError("damaged spool record: meta length past the record end")
    try:
        meta = json.loads(bytes(body[_U32.size : _U32.size + meta_len]))
    except ValueError as exc:
        raise CorruptCheckpointError(f"damaged spool record: meta is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpointError("damaged spool record: meta is not an object")
    return meta, bytes(body[_U32.size + meta_len :])


def _entry(
    meta: dict[str, Any], blob_size: int, segment: int, offset: int, size: int
) -> SpoolEntry:
    try:
        created = dt.datetime.fromisoformat(meta["created_at"])
        return SpoolEntry(
            segment=segment,
            offset=offset,
            size=size,
            run_id=str(meta["run_id"]),
            seq=int(meta["seq"]),
            tenant_id=str(meta["tenant_id"]),
            flow_id=str(meta["flow_id"]),
            status=CheckpointStatus(meta["status"]).value,
            schema_version=int(meta["schema_version"]),
            sha256=str(meta["sha256"]),
            raw_size=int(meta["raw_size"]),
            stored_size=blob_size,
            created_at=created if created.tzinfo else created.replace(tzinfo=dt.UTC),
            summary=dict(meta.get("summary") or {}),
            trace_id=meta.get("trace_id"),
            epoch=int(meta.get("epoch", 0)),
            spooled_at=float(meta.get("spooled_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpointError(f"damaged spool record: bad meta: {exc}") from None


def sealed_of(entry: SpoolEntry, blob: bytes) -> SealedCheckpoint:
    """The storage record of a spooled entry."""
    return SealedCheckpoint(
        tenant_id=entry.tenant_id,
        flow_id=entry.flow_id,
        run_id=entry.run_id,
        seq=entry.seq,
        status=CheckpointStatus(entry.status),
        schema_version=entry.schema_version,
        sha256=entry.sha256,
        raw_size=entry.raw_size,
        blob=blob,
        created_at=entry.created_at,
        summary=dict(entry.summary),
        trace_id=entry.trace_id,
    )


def _segment_name(number: int) -> str:
    return f"{_SEGMENT_PREFIX}{number:016d}{_SEGMENT_SUFFIX}"


def _segment_number(name: str) -> int | None:
    if not (name.startswith(_SEGMENT_PREFIX) and name.endswith(_SEGMENT_SUFFIX)):
        return None
    digits = name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


# -- the spool --------------------------------------------------------------------------------


class Spool:
    """An append-only, checksummed, fsynced log of sealed checkpoints in ``directory``.

    Call :meth:`open` (or :meth:`aopen`) first; it takes an exclusive lock on the directory
    (a second sidecar on the same spool is refused) and rebuilds the index. ``database``
    names the database the records belong to: a spool holding records of another one is
    refused, so they cannot be replayed into the wrong place.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        database: str | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ConfigError(f"spool max_bytes must be >= 1, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = max(1, int(segment_bytes))
        self.fsync = fsync
        self.database = database
        self._entries: deque[SpoolEntry] = deque()
        self._index: dict[tuple[str, int], SpoolEntry] = {}
        self._by_run: dict[str, dict[int, SpoolEntry]] = {}
        self._segments: dict[int, int] = {}  # number -> bytes on disk
        self._next_segment = 1
        self._active: int | None = None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._pending_bytes = 0
        self._lock = asyncio.Lock()
        self._opened = False
        self.torn_tails = 0
        self.corrupt_records = 0
        self.dead_letters = 0
        self.appended = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def quarantine_dir(self) -> Path:
        return self.directory / "quarantine"

    @property
    def dead_letter_dir(self) -> Path:
        return self.directory / "dead-letter"

    async def aopen(self) -> ScanReport:
        """:meth:`open` in a worker thread."""
        return await asyncio.to_thread(self.open)

    def open(self) -> ScanReport:
        """Lock the directory, scan and repair the segments, rebuild the index."""
        if self._opened:
            raise RuntimeError("the spool is open already")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the spool directory {self.directory}: {exc}") from exc
        self._take_lock()
        try:
            report = self._scan()
            self._check_meta()
        except BaseException:
            self._release_lock()
            raise
        self._opened = True
        return report

    def close(self) -> None:
        """Close the files and release the directory lock. Safe to call twice."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._active = None
        self._release_lock()
        self._opened = False

    def _take_lock(self) -> None:
        path = self.directory / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"the spool directory {self.directory} is in use by another sidecar; "
                    "give each sidecar its own --spool-dir"
                ) from exc
            raise ConfigError(f"cannot lock the spool directory {self.directory}: {exc}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def _check_meta(self) -> None:
        path = self.directory / "META"
        if path.exists():
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            old = meta.get("database") if isinstance(meta, dict) else None
            if (
                self._entries
                and old is not None
                and self.database is not None
                and old != self.database
            ):
                raise ConfigError(
                    f"the spool {self.directory} holds {len(self._entries)} checkpoints of "
                    f"database {old!r}, not {self.database!r}: start a sidecar on that "
                    "database to drain it, or use another --spool-dir"
                )
            if old == self.database or self.database is None:
                return
        self._atomic_write(
            path, json.dumps({"format": FORMAT, "database": self.database}).encode() + b"\n"
        )

    # -- scanning ------------------------------------------------------------------------

    def _read_cursor(self) -> tuple[int, int]:
        path = self.directory / "DRAINED"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return int(doc["segment"]), int(doc["offset"])
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Replaying from the start is safe (inserts are idempotent); skipping is not.
            log.warning("spool cursor %s is unreadable (%s): replaying every segment", path, exc)
            return 0, 0

    def _scan(self) -> ScanReport:
        report = ScanReport()
        cursor_segment, cursor_offset = self._read_cursor()
        numbers = sorted(
            n
            for n in (_segment_number(p.name) for p in self.directory.iterdir() if p.is_file())
            if n is not None
        )
        for number in numbers:
            path = self.directory / _segment_name(number)
            if number < cursor_segment:
                # Fully drained before a crash kept it from being deleted.
                path.unlink(missing_ok=True)
                report.removed_segments += 1
                continue
            start = cursor_offset if number == cursor_segment else 0
            self._scan_segment(number, path, start, report)
            report.segments += 1
        self._next_segment = max([cursor_segment, *numbers], default=0) + 1
        if numbers and numbers[-1] >= cursor_segment and numbers[-1] in self._segments:
            self._active = numbers[-1]
        report.records = len(self._entries)
        if report.torn_tails or report.corrupt_records:
            self._sync_dir(self.directory)
        return report

    def _scan_segment(self, number: int, path: Path, start: int, report: ScanReport) -> None:
        data = path.read_bytes()
        view = memoryview(data)
        offset = min(start, len(data))
        while offset < len(data):
            try:
                size = _check_frame(view, offset)
                meta, blob = decode_frame(view[offset : offset + size])
                entry = _entry(meta, len(blob), number, offset, size)
            except (_Damaged, CorruptCheckpointError) as exc:
                kind = exc.kind if isinstance(exc, _Damaged) else "corrupt"
                detail = exc.detail if isinstance(exc, _Damaged) else str(exc)
                resume = self._resync(view, offset + 1)
                end = resume if resume is not None else len(data)
                self._quarantine(path.name, offset, view[offset:end])
                report.quarantined_bytes += end - offset
                if resume is None:
                    # Nothing valid follows: a torn or damaged tail. Cut it off so new
                    # records are appended after the last good one.
                    if kind == "torn":
                        self.torn_tails += 1
                        report.torn_tails += 1
                    else:
                        self.corrupt_records += 1
                        report.corrupt_records += 1
                    message = (
                        f"spool segment {path.name}: {'torn' if kind == 'torn' else 'damaged'} "
                        f"tail at offset {offset} ({detail}); {end - offset} bytes quarantined "
                        "and truncated"
                    )
                    log.warning(message)
                    report.problems.append(message)
                    self._truncate(path, offset)
                    data = data[:offset]
                    break
                self.corrupt_records += 1
                report.corrupt_records += 1
                message = (
                    f"spool segment {path.name}: damaged record at offset {offset} ({detail}); "
                    f"{end - offset} bytes quarantined, never used"
                )
                log.error(message)
                report.problems.append(message)
                offset = end
                continue
            self._add(entry)
            offset += size
        self._segments[number] = len(data)

    @staticmethod
    def _resync(view: memoryview, start: int) -> int | None:
        """The offset of the next valid frame at or after ``start``, if any."""
        data = view.obj if isinstance(view.obj, bytes) else bytes(view)
        pos = start
        while True:
            pos = data.find(MAGIC, pos)
            if pos < 0:
                return None
            try:
                _check_frame(view, pos)
                return pos
            except _Damaged:
                pos += 1

    def _quarantine(self, segment_name: str, offset: int, data: memoryview) -> None:
        try:
            self.quarantine_dir.mkdir(exist_ok=True)
            target = self.quarantine_dir / f"{segment_name}.{offset}.bin"
            self._atomic_write(target, bytes(data))
        except OSError as exc:
            log.error("cannot quarantine %d damaged spool bytes: %s", len(data), exc)

    def _truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, size)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- index ---------------------------------------------------------------------------

    def _add(self, entry: SpoolEntry) -> None:
        self._entries.append(entry)
        self._pending_bytes += entry.size
        # The first copy of a (run_id, seq) answers reads; a later copy replays as a duplicate.
        self._index.setdefault(entry.key, entry)
        self._by_run.setdefault(entry.run_id, {}).setdefault(entry.seq, entry)

    def _remove(self, entry: SpoolEntry) -> None:
        self._pending_bytes -= entry.size
        if self._index.get(entry.key) is entry:
            del self._index[entry.key]
            seqs = self._by_run.get(entry.run_id)
            if seqs is not None:
                seqs.pop(entry.seq, None)
                if not seqs:
                    del self._by_run[entry.run_id]

    def get(self, run_id: str, seq: int) -> SpoolEntry | None:
        """The spooled entry of ``(run_id, seq)``, if any."""
        return self._index.get((run_id, seq))

    def latest(self, run_id: str) -> SpoolEntry | None:
        """The spooled entry of ``run_id`` with the highest seq, if any."""
        seqs = self._by_run.get(run_id)
        return seqs[max(seqs)] if seqs else None

    def run_entries(self, run_id: str) -> list[SpoolEntry]:
        """Spooled entries of ``run_id``, by seq."""
        seqs = self._by_run.get(run_id, {})
        return [seqs[s] for s in sorted(seqs)]

    def has_run(self, run_id: str) -> bool:
        return run_id in self._by_run

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[SpoolEntry]:
        return iter(list(self._entries))

    @property
    def records(self) -> int:
        """Records waiting to be replayed."""
        return len(self._entries)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the records waiting to be replayed."""
        return self._pending_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes of segment files on disk (what ``max_bytes`` bounds)."""
        return sum(list(self._segments.values()))

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds since the oldest waiting record was spooled (0 when empty)."""
        if not self._entries:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, now - self._entries[0].spooled_at)

    def room(self) -> int:
        return max(0, self.max_bytes - self.disk_bytes)

    # -- appending -----------------------------------------------------------------------

    async def append(self, items: Sequence[tuple[SealedCheckpoint, int]]) -> list[SpoolEntry]:
        """Write ``(record, epoch)`` items, fsync them, index them; return their entries.

        Raises :class:`SpoolFullError` (nothing written) when they do not fit, and
        :class:`StoreUnavailableError` when the disk refuses the write.
        """
        if not self._opened:
            raise StoreUnavailableError("the spool is not open")
        async with self._lock:
            # Encoding copies every blob: done in the worker thread with the write.
            entries = await asyncio.to_thread(self._encode_and_write, items, time.time())
            for entry in entries:
                self._add(entry)
            self.appended += len(entries)
        return entries

    def _encode_and_write(
        self, items: Sequence[tuple[SealedCheckpoint, int]], now: float
    ) -> list[SpoolEntry]:
        frames = [encode_frame(record, epoch, now) for record, epoch in items]
        total = sum(len(f) for f in frames)
        used = self.disk_bytes
        if used + total > self.max_bytes:
            raise SpoolFullError(
                f"the spool is full ({used} of {self.max_bytes} bytes used, {total} more "
                "needed): the checkpoint is not durable, retry later"
            )
        offsets = self._write(frames)
        return [
            _entry(_meta_of(record, epoch, now), record.stored_size, segment, offset, len(frame))
            for (segment, offset), frame, (record, epoch) in zip(
                offsets, frames, items, strict=True
            )
        ]

    def _write(self, frames: Sequence[bytes]) -> list[tuple[int, int]]:
        if (
            self._fd is None
            or self._active is None
            or (self._segments.get(self._active, 0) >= self.segment_bytes)
        ):
            self._rotate_locked()
        assert self._fd is not None and self._active is not None
        segment, fd = self._active, self._fd
        start = self._segments[segment]
        data = b"".join(frames)
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.write(fd, view[written:])
            if self.fsync:
                os.fdatasync(fd)
        except OSError as exc:
            # Leave no partial record behind: the next append starts at a record boundary.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            raise StoreUnavailableError(
                f"cannot write the spool in {self.directory}: {exc}"
            ) from exc
        self._segments[segment] = start + len(data)
        offsets = []
        offset = start
        for frame in frames:
            offsets.append((segment, offset))
            offset += len(frame)
        return offsets

    def _rotate_locked(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._active is not None and self._segments.get(self._active, 0) < self.segment_bytes:
            number = self._active  # reopen the segment a restart left behind
        else:
            number = self._next_segment
            self._next_segment += 1
        path = self.directory / _segment_name(number)
        created = not path.exists()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot create spool segment {path}: {exc}") from exc
        if created:
            self._sync_dir(self.directory)
        self._fd = fd
        self._active = number
        self._segments.setdefault(number, os.fstat(fd).st_size)

    # -- reading -------------------------------------------------------------------------

    def _read_frame_sync(self, entry: SpoolEntry) -> bytes | None:
        path = self.directory / _segment_name(entry.segment)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # drained and deleted meanwhile: PostgreSQL has it
        try:
            frame = os.pread(fd, entry.size, entry.offset)
        finally:
            os.close(fd)
        return frame

    async def read_frame(self, entry: SpoolEntry) -> bytes | None:
        """The raw framed bytes of ``entry`` (None when its segment is gone)."""
        if entry.size <= _INLINE_READ:
            return self._read_frame_sync(entry)
        return await asyncio.to_thread(self._read_frame_sync, entry)

    async def read_frames(self, entries: Sequence[SpoolEntry]) -> list[bytes | None]:
        """The raw frames of ``entries``, read in one worker thread."""
        return await asyncio.to_thread(lambda: [self._read_frame_sync(e) for e in entries])

    async def load(self, entry: SpoolEntry) -> SealedCheckpoint | None:
        """The sealed record of ``entry``, CRC-checked; None when it was drained meanwhile.

        Raises :class:`CorruptCheckpointError` when the bytes on disk are damaged.
        """
        frame = await self.read_frame(entry)
        if frame is None:
            return None
        meta, blob = decode_frame(frame)
        if meta.get("run_id") != entry.run_id or meta.get("seq") != entry.seq:
            raise CorruptCheckpointError(
                f"spool record at {entry.segment}:{entry.offset} holds "
                f"{meta.get('run_id')}#{meta.get('seq')}, not {entry.run_id}#{entry.seq}"
            )
        return sealed_of(entry, blob)

    def head(self, max_records: int, max_bytes: int) -> list[SpoolEntry]:
        """The oldest waiting entries, in spool order (at least one when not empty)."""
        out: list[SpoolEntry] = []
        size = 0
        for entry in self._entries:
            if out and (len(out) >= max_records or size + entry.size > max_bytes):
                break
            out.append(entry)
            size += entry.size
        return out

    # -- draining ------------------------------------------------------------------------

    async def commit(
        self,
        entries: Sequence[SpoolEntry],
        dead: Sequence[DeadLetter] = (),
        quarantined: Sequence[tuple[SpoolEntry, bytes]] = (),
    ) -> None:
        """Forget ``entries`` (the head of the spool, now in PostgreSQL or dead-lettered).

        Dead letters and quarantined frames are written and fsynced first; then the drain
        cursor moves past the entries; then fully drained segments are deleted.
        """
        if not entries:
            return
        head = itertools.islice(self._entries, len(entries))
        if any(a is not b for a, b in zip(head, entries, strict=False)):
            raise RuntimeError("spool commit out of order: only the head can be committed")
        async with self._lock:
            if dead:
                await asyncio.to_thread(self._write_dead_letters, dead)
            for entry, frame in quarantined:
                await asyncio.to_thread(
                    self._quarantine,
                    _segment_name(entry.segment),
                    entry.offset,
                    memoryview(frame),
                )
            for _ in entries:
                self._remove(self._entries.popleft())
            self.dead_letters += len(dead)
            self.corrupt_records += len(quarantined)
            await asyncio.to_thread(self._advance)

    def _advance(self) -> None:
        if self._entries:
            first = self._entries[0]
            cursor = (first.segment, first.offset)
            doomed = [n for n in self._segments if n < first.segment]
        else:
            # Everything is drained: retire the active segment too, so its space comes back.
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._active = None
            cursor = (self._next_segment, 0)
            doomed = list(self._segments)
        self._atomic_write(
            self.directory / "DRAINED",
            json.dumps({"segment": cursor[0], "offset": cursor[1]}).encode() + b"\n",
        )
        for number in doomed:
            (self.directory / _segment_name(number)).unlink(missing_ok=True)
            self._segments.pop(number, None)
        if doomed:
            self._sync_dir(self.directory)

    def _write_dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        folder = self.dead_letter_dir
        folder.mkdir(exist_ok=True)
        now = dt.datetime.now(dt.UTC).isoformat()
        lines = b"".join(
            json.dumps(
                {
                    "run_id": d.entry.run_id,
                    "seq": d.entry.seq,
                    "tenant_id": d.entry.tenant_id,
                    "sha256": d.entry.sha256,
                    "epoch": d.entry.epoch,
                    "reason": d.reason,
                    "detail": d.detail,
                    "dead_lettered_at": now,
                },
                separators=(",", ":"),
            ).encode()
            + b"\n"
            for d in dead
        )
        for name, data in (
            ("dead-letter.spool", b"".join(d.frame for d in dead)),
            ("dead-letter.jsonl", lines),
        ):
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                view = memoryview(data)
                written = 0
                while written < len(data):
                    written += os.write(fd, view[written:])
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self._sync_dir(folder)

    # -- helpers -------------------------------------------------------------------------

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._sync_dir(path.parent)

    def _sync_dir(self, directory: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def stats(self) -> dict[str, Any]:
        """What ``/readyz`` shows of the spool."""
        return {
            "directory": str(self.directory),
            "records": self.records,
            "bytes": self.pending_bytes,
            "disk_bytes": self.disk_bytes,
            "max_bytes": self.max_bytes,
            "oldest_age_seconds": round(self.oldest_age(), 3),
            "dead_letters": self.dead_letters,
            "corrupt_records": self.corrupt_records,
            "torn_tails": self.torn_tails,
        }
