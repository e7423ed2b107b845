"""A store in a directory tree: durable on one machine, shared by processes through file locks.

Layout under ``directory``::

    runs/<run_id>/run.json                     the run row (status, epoch, claim)
    runs/<run_id>/<seq:020d>.ckpt              one checkpoint: JSON header line + zstd blob
    runs/<run_id>/inputs/<sha256(path)>.json   one human answer
    locks/<run_id>.lock                        flock target serializing writers of a run

Run ids are validated to be safe file names; input paths are free-form, so their
files are named by the SHA-256 of the path. Every write goes to a temp file in
the target directory (``.tmp-*``), is flushed and fsynced, renamed over the
target with ``os.replace`` and the directory is fsynced: a crash leaves either
the old file or the new one, never a partial one, and a stray temp file is
ignored by every read. Writes to one run hold an exclusive ``flock`` on its lock
file, so claims, puts and consumes are atomic across processes. Locks live
outside the run directory so ``delete_run`` can remove the run while holding
its lock; lock files are left behind (they are empty).

A checkpoint file whose header is readable but whose blob is damaged is listed
from its header and raises :class:`CorruptCheckpointError` on ``get``; a file
without a readable header raises :class:`CorruptCheckpointError` naming the file.
All blocking file I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from checkpoint.errors import (
    CorruptCheckpointError,
    InputConflictError,
    RunNotFoundError,
    StoreError,
)
from checkpoint.ids import validate_id
from checkpoint.models import CheckpointStatus
from checkpoint.store import (
    BaseStore,
    CheckpointSummary,
    ClaimInfo,
    InputRecord,
    PutOutcome,
    RunInfo,
    RunPage,
    SealedCheckpoint,
)
from checkpoint.stores import rules
from checkpoint.stores.rules import RunRow

__all__ = ["FileStore"]

_CKPT = re.compile(r"(\d{20})\.ckpt")
_HEADER_VERSION = 1
_MAX_HEADER = 64 * 1024 * 1024
_TMP_PREFIX = ".tmp-"
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a part."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{uuid.uuid4().hex}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)


def _mkdir(path: Path, *, fsync: bool = True) -> None:
    """Create ``path`` (and parents) durably: the new entry is fsynced in its parent."""
    if path.is_dir():
        return
    _mkdir(path.parent, fsync=fsync)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    if fsync:
        _fsync_dir(path.parent)


def _header_of(record: SealedCheckpoint) -> dict[str, Any]:
    return {
        "v": _HEADER_VERSION,
        "run_id": record.run_id,
        "seq": record.seq,
        "tenant_id": record.tenant_id,
        "flow_id": record.flow_id,
        "status": str(record.status),
        "schema_version": record.schema_version,
        "sha256": record.sha256,
        "raw_size": record.raw_size,
        "blob_size": len(record.blob),
        "created_at": record.created_at.isoformat(),
        "summary": record.summary,
        "trace_id": record.trace_id,
    }


class _Header:
    """A checkpoint file's parsed header."""

    __slots__ = ("doc", "offset", "path")

    def __init__(self, path: Path, doc: dict[str, Any], offset: int) -> None:
        self.path = path
        self.doc = doc
        self.offset = offset

    @property
    def seq(self) -> int:
        return int(self.doc["seq"])

    @property
    def status(self) -> str:
        return str(self.doc["status"])

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.doc["created_at"])

    def summary(self) -> CheckpointSummary:
        return CheckpointSummary(
            run_id=self.doc["run_id"],
            seq=self.seq,
            status=CheckpointStatus(self.status),
            created_at=self.created_at,
            sha256=self.doc["sha256"],
            raw_size=int(self.doc["raw_size"]),
            stored_size=int(self.doc["blob_size"]),
        )

    def record(self, blob: bytes) -> SealedCheckpoint:
        d = self.doc
        return SealedCheckpoint(
            tenant_id=d["tenant_id"],
            flow_id=d["flow_id"],
            run_id=d["run_id"],
            seq=self.seq,
            status=CheckpointStatus(self.status),
            schema_version=int(d["schema_version"]),
            sha256=d["sha256"],
            raw_size=int(d["raw_size"]),
            blob=blob,
            created_at=self.created_at,
            summary=dict(d.get("summary") or {}),
            trace_id=d.get("trace_id"),
        )


def _read_header(path: Path, run_id: str, seq: int) -> _Header:
    """Parse the header line; :class:`CorruptCheckpointError` naming the file when unreadable."""
    with open(path, "rb") as fh:
        line = fh.readline(_MAX_HEADER)
    problem = None
    if not line.endswith(b"\n"):
        problem = "its header line is incomplete"
    else:
        try:
            doc = json.loads(line)
            header = _Header(path, doc, len(line))
            if doc.get("v") != _HEADER_VERSION:
                problem = f"unknown header version {doc.get('v')!r}"
            elif doc.get("run_id") != run_id or header.seq != seq:
                problem = f"its header names {doc.get('run_id')}#{doc.get('seq')}"
            else:
                header.summary()  # every index field present and well-typed
                return header
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problem = f"its header is not valid ({type(exc).__name__}: {exc})"
    raise CorruptCheckpointError(
        f"checkpoint file {path} of run {run_id} is corrupt: {problem}; "
        "move it away or restore it from a backup"
    )


class FileStore(BaseStore):
    """Checkpoints as files under ``directory`` (created on first write).

    ``fsync=False`` skips the fsyncs: faster, but a power loss may lose or
    truncate recent writes; an application crash still never does.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.fsync = fsync

    # -- paths ---------------------------------------------------------------------------

    @property
    def _runs(self) -> Path:
        return self.directory / "runs"

    def run_dir(self, run_id: str) -> Path:
        """The directory of one run (the id is validated first)."""
        return self._runs / validate_id(run_id, "run_id")

    def checkpoint_path(self, run_id: str, seq: int) -> Path:
        """The file of checkpoint ``run_id#seq``."""
        return self.run_dir(run_id) / f"{seq:020d}.ckpt"

    def input_path(self, run_id: str, path: str) -> Path:
        """The file of the answer to input ``path`` (named by the path's SHA-256)."""
        digest = hashlib.sha256(path.encode("utf-8")).hexdigest()
        return self.run_dir(run_id) / "inputs" / f"{digest}.json"

    # -- low-level helpers (run in worker threads) ----------------------------------------

    @contextlib.contextmanager
    def _locked(self, run_id: str) -> Iterator[None]:
        locks = self.directory / "locks"
        _mkdir(locks, fsync=self.fsync)
        fd = os.open(locks / f"{run_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _write(self, path: Path, data: bytes) -> None:
        _write_atomic(path, data, fsync=self.fsync)

    def _read_row(self, run_id: str) -> RunRow | None:
        path = self.run_dir(run_id) / "run.json"
        try:
            doc = json.loads(path.read_bytes())
            return RunRow.from_json(doc)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"run file {path} is unreadable: {exc}") from exc

    def _write_row(self, row: RunRow) -> None:
        _mkdir(self.run_dir(row.run_id), fsync=self.fsync)
        self._write(self.run_dir(row.run_id) / "run.json", json.dumps(row.to_json()).encode())

    def _require_dir(self, run_id: str) -> None:
        # Checked before locking, so unknown ids never leave lock files behind.
        if not self.run_dir(run_id).is_dir():
            raise RunNotFoundError(f"run {run_id} has no checkpoint in this store")

    def _need_row(self, run_id: str) -> RunRow:
        row = self._read_row(run_id)
        if row is None:
            raise RunNotFoundError(f"run {run_id} has no checkpoint in this store")
        return row

    def _seqs(self, run_id: str) -> list[int]:
        """Seqs of the run's checkpoint files, newest first (temp files never match)."""
        try:
            names = os.listdir(self.run_dir(run_id))
        except FileNotFoundError:
            return []
        seqs = [int(m.group(1)) for n in names if (m := _CKPT.fullmatch(n))]
        return sorted(seqs, reverse=True)

    def _header(self, run_id: str, seq: int) -> _Header | None:
        try:
            return _read_header(self.checkpoint_path(run_id, seq), run_id, seq)
        except FileNotFoundError:
            return None

    def _read_record(self, run_id: str, seq: int) -> SealedCheckpoint | None:
        path = self.checkpoint_path(run_id, seq)
        try:
            header = _read_header(path, run_id, seq)
            with open(path, "rb") as fh:
                fh.seek(header.offset)
                blob = fh.read()
        except FileNotFoundError:
            return None
        expected = int(header.doc["blob_size"])
        if len(blob) != expected:
            raise CorruptCheckpointError(
                f"checkpoint file {path} of run {run_id} is truncated: "
                f"{len(blob)} of {expected} payload bytes"
            )
        return header.record(blob)

    # -- put / get -----------------------------------------------------------------------

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome:
        rules.validate_record(record)
        return await self._io(self._put_sync, record, epoch)

    def _put_sync(self, record: SealedCheckpoint, epoch: int) -> PutOutcome:
        run_id = record.run_id
        with self._locked(run_id):
            row = self._read_row(run_id)
            existing = self._header(run_id, record.seq)
            outcome = rules.check_put(
                row, existing.doc["sha256"] if existing else None, record, epoch
            )
            if outcome == "duplicate":
                # A crash between the checkpoint file and run.json: a retry completes it.
                if row is None or row.latest_seq < record.seq:
                    self._write_row(rules.apply_put(row, record, rules.now_micros()))
                return outcome
            header = json.dumps(_header_of(record), separators=(",", ":")).encode()
            _mkdir(self.run_dir(run_id), fsync=self.fsync)
            self._write(self.checkpoint_path(run_id, record.seq), header + b"\n" + record.blob)
            self._write_row(rules.apply_put(row, record, rules.now_micros()))
            return "stored"

    async def get_sealed(self, run_id: str, seq: int | None = None) -> SealedCheckpoint | None:
        validate_id(run_id, "run_id")
        return await self._io(self._get_sync, run_id, seq)

    def _get_sync(self, run_id: str, seq: int | None) -> SealedCheckpoint | None:
        if seq is None:
            seqs = self._seqs(run_id)
            if not seqs:
                return None
            seq = seqs[0]
        return self._read_record(run_id, seq)

    # -- listings ------------------------------------------------------------------------

    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]:
        validate_id(run_id, "run_id")
        rules.validate_limit(limit)
        return await self._io(self._list_sync, run_id, limit, before_seq)

    def _list_sync(
        self, run_id: str, limit: int, before_seq: int | None
    ) -> list[CheckpointSummary]:
        out = []
        for seq in self._seqs(run_id):
            if before_seq is not None and seq >= before_seq:
                continue
            header = self._header(run_id, seq)
            if header is not None:  # pruned meanwhile
                out.append(header.summary())
            if len(out) == limit:
                break
        return out

    async def get_run(self, run_id: str) -> RunInfo | None:
        validate_id(run_id, "run_id")
        row = await self._io(self._read_row, run_id)
        return row.to_info(rules.now_micros()) if row is not None else None

    async def list_runs(
        self,
        *,
        flow_id: str | None = None,
        status: CheckpointStatus | None = None,
        tenant_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        rules.validate_limit(limit)
        rows = await self._io(self._all_rows)
        runs, next_cursor = rules.page_runs(
            rows,
            flow_id=flow_id,
            status=status,
            tenant_id=tenant_id,
            limit=limit,
            cursor=cursor,
            now=rules.now_micros(),
        )
        return RunPage(runs=runs, next_cursor=next_cursor)

    def _run_ids(self) -> list[str]:
        try:
            names = os.listdir(self._runs)
        except FileNotFoundError:
            return []
        # deleted runs are renamed to ".deleted-*" before removal; run ids never start with "."
        return [n for n in names if not n.startswith(".")]

    def _all_rows(self) -> list[RunRow]:
        rows = []
        for run_id in self._run_ids():
            row = self._read_row(run_id)
            if row is not None:
                rows.append(row)
        return rows

    # -- claims --------------------------------------------------------------------------

    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = rules.lease_micros(lease_seconds)

        def op() -> ClaimInfo:
            self._require_dir(run_id)
            with self._locked(run_id):
                row = self._need_row(run_id)
                info = rules.apply_claim(row, worker_id, lease, rules.now_micros())
                self._write_row(row)
                return info

        return await self._io(op)

    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = rules.lease_micros(lease_seconds)

        def op() -> ClaimInfo:
            self._require_dir(run_id)
            with self._locked(run_id):
                row = self._need_row(run_id)
                info = rules.apply_renew(row, worker_id, epoch, lease, rules.now_micros())
                self._write_row(row)
                return info

        return await self._io(op)

    async def release(self, run_id: str, worker_id: str, epoch: int) -> None:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")

        def op() -> None:
            self._require_dir(run_id)
            with self._locked(run_id):
                row = self._need_row(run_id)
                rules.apply_release(row, worker_id, epoch)
                self._write_row(row)

        await self._io(op)

    # -- human input ---------------------------------------------------------------------

    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord:
        validate_id(run_id, "run_id")
        rules.validate_input_path(path)
        encoded = rules.encode_answer(answer)

        def op() -> InputRecord:
            self._require_dir(run_id)
            with self._locked(run_id):
                self._need_row(run_id)
                target = self.input_path(run_id, path)
                if target.exists():
                    raise InputConflictError(f"input {path!r} of run {run_id} was already answered")
                doc = {
                    "path": path,
                    "answer": encoded,
                    "submitted_at": rules.now_micros(),
                    "consumed": False,
                }
                _mkdir(target.parent, fsync=self.fsync)
                self._write(target, json.dumps(doc).encode())
                return self._input_record(run_id, doc)

        return await self._io(op)

    @staticmethod
    def _input_record(run_id: str, doc: dict[str, Any]) -> InputRecord:
        return InputRecord(
            run_id=run_id,
            path=doc["path"],
            answer=rules.decode_answer(doc["answer"]),
            submitted_at=rules.from_micros(int(doc["submitted_at"])),
            consumed=bool(doc["consumed"]),
        )

    def _read_input(self, file: Path) -> dict[str, Any] | None:
        try:
            doc = json.loads(file.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreError(f"input file {file} is unreadable: {exc}") from exc
        if not isinstance(doc, dict):
            raise StoreError(f"input file {file} does not hold an input record")
        return doc

    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]:
        validate_id(run_id, "run_id")

        def op() -> list[InputRecord]:
            folder = self.run_dir(run_id) / "inputs"
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return []
            docs = []
            for name in names:
                if name.startswith(".") or not name.endswith(".json"):
                    continue
                doc = self._read_input(folder / name)
                if doc is not None and (include_consumed or not doc["consumed"]):
                    docs.append(doc)
            docs.sort(key=lambda d: (d["submitted_at"], d["path"]))
            return [self._input_record(run_id, d) for d in docs]

        return await self._io(op)

    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]:
        validate_id(run_id, "run_id")
        wanted = [rules.validate_input_path(p) for p in paths]

        def op() -> list[str]:
            if not self.run_dir(run_id).is_dir():
                return []
            consumed = []
            with self._locked(run_id):
                for path in dict.fromkeys(wanted):
                    target = self.input_path(run_id, path)
                    doc = self._read_input(target)
                    if doc is None or doc["consumed"]:
                        continue
                    doc["consumed"] = True
                    self._write(target, json.dumps(doc).encode())
                    consumed.append(path)
            return consumed

        return await self._io(op)

    # -- deletion and retention ------------------------------------------------------------

    async def delete_run(self, run_id: str) -> bool:
        validate_id(run_id, "run_id")

        def op() -> bool:
            if not self.run_dir(run_id).is_dir():
                return False
            with self._locked(run_id):
                folder = self.run_dir(run_id)
                if not folder.is_dir():
                    return False
                # One rename makes the whole run vanish at once, even if rmtree is cut short.
                doomed = self._runs / f".deleted-{run_id}-{uuid.uuid4().hex}"
                os.replace(folder, doomed)
                if self.fsync:
                    _fsync_dir(self._runs)
            shutil.rmtree(doomed, ignore_errors=True)
            return True

        return await self._io(op)

    async def prune(self, run_id: str, max_checkpoints: int) -> int:
        validate_id(run_id, "run_id")
        keep = rules.validate_retention(max_checkpoints)
        return await self._io(self._trim_sync, run_id, keep, None)

    async def expire(self, older_than: dt.datetime) -> int:
        cutoff = rules.to_micros(older_than)

        def op() -> int:
            return sum(self._trim_sync(run_id, None, cutoff) for run_id in self._run_ids())

        return await self._io(op)

    def _trim_sync(self, run_id: str, keep: int | None, cutoff: int | None) -> int:
        if not self.run_dir(run_id).is_dir():
            return 0
        with self._locked(run_id):
            entries = []
            unreadable = set()
            for seq in self._seqs(run_id):
                try:
                    header = self._header(run_id, seq)
                except CorruptCheckpointError:
                    # Status and age unknown: it still counts, but is never deleted here.
                    unreadable.add(seq)
                    entries.append((seq, "unreadable", 0))
                    continue
                if header is not None:
                    entries.append((seq, header.status, rules.to_micros(header.created_at)))
            victims = rules.retention_victims(
                entries,
                keep=keep,
                cutoff=cutoff,
                row=self._read_row(run_id),
                now=rules.now_micros(),
            )
            readable = [seq for seq, _, _ in entries if seq not in unreadable]
            # With a damaged latest checkpoint, the newest good one is what a resume falls
            # back to: keep it too.
            fallback = readable[0] if unreadable and readable else None
            victims = [seq for seq in victims if seq not in unreadable and seq != fallback]
            for seq in victims:
                self.checkpoint_path(run_id, seq).unlink(missing_ok=True)
            if victims and self.fsync:
                _fsync_dir(self.run_dir(run_id))
            return len(victims)

    # -- plumbing --------------------------------------------------------------------------

    async def _io(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run blocking file work in a thread; OS errors become :class:`StoreError`."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as exc:
            raise StoreError(f"file store at {self.directory} failed: {exc}") from exc
