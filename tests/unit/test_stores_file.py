"""FileStore specifics: atomic writes, crash leftovers, corrupt files, safe names, locking."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from checkpoint import CheckpointStatus, CorruptCheckpointError, RunNotFoundError, StoreError
from checkpoint.stores.file import FileStore
from tests.conformance.builders import checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "ckpts")


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_layout_and_header(store: FileStore) -> None:
    cp = checkpoint("run-1", 7, flow_id="etl", pending=["review"])
    await store.put(cp)
    path = store.checkpoint_path("run-1", 7)
    assert path == store.directory / "runs" / "run-1" / "00000000000000000007.ckpt"
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    record = store.seal_checkpoint(cp)
    assert header["sha256"] == record.sha256
    assert header["raw_size"] == record.raw_size
    assert header["blob_size"] == len(record.blob)
    assert (header["status"], header["tenant_id"], header["flow_id"]) == (
        "pending_input",
        "default",
        "etl",
    )
    assert header["summary"]["pending_inputs"] == ["review"]
    assert path.stat().st_size == len(path.read_bytes().split(b"\n", 1)[0]) + 1 + len(record.blob)
    run = json.loads((store.run_dir("run-1") / "run.json").read_bytes())
    assert (run["latest_seq"], run["status"], run["epoch"]) == (7, "pending_input", 0)


async def test_failed_rename_leaves_no_visible_or_temp_file(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.put(checkpoint("run-1", 0))
    real_replace = os.replace

    def broken_replace(src: object, dst: object) -> None:
        if str(dst).endswith(".ckpt"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreError, match="No space left"):
        await store.put(checkpoint("run-1", 1))
    monkeypatch.undo()

    names = os.listdir(store.run_dir("run-1"))
    assert sorted(names) == ["00000000000000000000.ckpt", "run.json"]
    assert [s.seq for s in await store.list_checkpoints("run-1")] == [0]
    latest = await store.get("run-1")
    assert latest is not None and latest.seq == 0
    run = await store.get_run("run-1")
    assert run is not None and run.latest_seq == 0
    assert await store.put(checkpoint("run-1", 1)) == "stored"


async def test_stray_temp_files_are_ignored(store: FileStore) -> None:
    await store.put(checkpoint("run-1", 0))
    run_dir = store.run_dir("run-1")
    # what a writer killed between write and rename leaves behind
    (run_dir / ".tmp-00000000000000000001.ckpt-deadbeef").write_bytes(b'{"v":1,"seq":1}\ntrunc')
    (run_dir / ".tmp-run.json-deadbeef").write_bytes(b"{")
    assert [s.seq for s in await store.list_checkpoints("run-1")] == [0]
    latest = await store.get("run-1")
    assert latest is not None and latest.seq == 0
    assert await store.get("run-1", 1) is None
    run = await store.get_run("run-1")
    assert run is not None and run.latest_seq == 0
    assert [r.run_id for r in (await store.list_runs()).runs] == ["run-1"]


async def test_truncated_checkpoint_is_corrupt_but_still_listed(store: FileStore) -> None:
    await store.put(checkpoint("run-1", 0))
    await store.put(checkpoint("run-1", 1))
    path = store.checkpoint_path("run-1", 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(CorruptCheckpointError, match="truncated") as caught:
        await store.get("run-1", 1)
    assert str(path) in str(caught.value)
    with pytest.raises(CorruptCheckpointError):
        await store.get("run-1")  # the latest is damaged: reported, never skipped
    listed = await store.list_checkpoints("run-1")
    assert [s.seq for s in listed] == [1, 0]
    previous = await store.get("run-1", 0)
    assert previous is not None and previous.seq == 0


async def test_garbage_file_is_reported_with_its_name(store: FileStore) -> None:
    await store.put(checkpoint("run-1", 0))
    await store.put(checkpoint("run-1", 1))
    path = store.checkpoint_path("run-1", 1)
    path.write_bytes(b"\x00\x01garbage without a header line")
    with pytest.raises(CorruptCheckpointError) as caught:
        await store.get("run-1", 1)
    assert str(path) in str(caught.value)
    with pytest.raises(CorruptCheckpointError) as listed:
        await store.list_checkpoints("run-1")
    assert str(path) in str(listed.value)
    # below the damaged file, paging still works
    assert [s.seq for s in await store.list_checkpoints("run-1", before_seq=1)] == [0]
    # retention never deletes what it cannot read, nor the newest good fallback
    await store.put(checkpoint("run-1", 2))
    store.checkpoint_path("run-1", 2).write_bytes(b"{}")
    assert await store.prune("run-1", 0) == 0
    assert path.exists()
    assert store.checkpoint_path("run-1", 0).exists()


async def test_header_naming_another_checkpoint_is_corrupt(store: FileStore) -> None:
    await store.put(checkpoint("run-1", 0))
    await store.put(checkpoint("run-1", 1))
    store.checkpoint_path("run-1", 1).write_bytes(store.checkpoint_path("run-1", 0).read_bytes())
    with pytest.raises(CorruptCheckpointError, match="names run-1#0"):
        await store.get("run-1", 1)


async def test_input_paths_never_become_file_names(store: FileStore, tmp_path: Path) -> None:
    await store.put(checkpoint("run-1", 0, pending=["../../escape"]))
    for path in ("../../escape", "a/b", "/etc/passwd", "map[7]/review#2"):
        await store.submit_input("run-1", path, {"p": path})
    inputs = sorted(os.listdir(store.run_dir("run-1") / "inputs"))
    assert len(inputs) == 4
    assert all(len(n) == len("0" * 64 + ".json") and n[:64].isalnum() for n in inputs)
    everything = await asyncio.to_thread(lambda: list(tmp_path.rglob("*")))
    outside = [p for p in everything if store.directory not in p.parents]
    assert outside == [store.directory]
    records = await store.list_inputs("run-1")
    assert sorted(r.path for r in records) == sorted(
        ["../../escape", "a/b", "/etc/passwd", "map[7]/review#2"]
    )


async def test_retry_after_a_crash_between_checkpoint_and_run_row(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.put(checkpoint("run-1", 0))
    cp = checkpoint("run-1", 1, status=CheckpointStatus.COMPLETED)

    def crash(row: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(store, "_write_row", crash)
    with pytest.raises(StoreError):
        await store.put(cp)
    monkeypatch.undo()
    # the checkpoint file landed, the run row did not: the latest is still found by seq
    latest = await store.get("run-1")
    assert latest == cp
    run = await store.get_run("run-1")
    assert run is not None and run.latest_seq == 0
    # the writer's retry is a duplicate and completes the run row
    assert await store.put(cp) == "duplicate"
    run = await store.get_run("run-1")
    assert run is not None
    assert (run.latest_seq, run.status) == (1, "completed")


async def test_delete_run_leaves_nothing_behind(store: FileStore) -> None:
    await store.put(checkpoint("run-1", 0, pending=["review"]))
    await store.submit_input("run-1", "review", True)
    assert await store.delete_run("run-1") is True
    assert os.listdir(store.directory / "runs") == []


def _claim_in_process(directory: str, worker: str, start: object, results: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    store = FileStore(directory)
    try:
        info = asyncio.run(store.claim("run-1", worker, 30))
        results.put((worker, info.epoch))  # type: ignore[attr-defined]
    except Exception as exc:
        results.put((worker, type(exc).__name__))  # type: ignore[attr-defined]


async def test_claims_are_atomic_across_processes(store: FileStore) -> None:
    await store.put(checkpoint("run-1", 0))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_process, args=(str(store.directory), f"w{i}", start, results))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    try:
        start.set()
        outcomes = [await asyncio.to_thread(results.get, True, 60) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    won = [o for o in outcomes if o[1] == 1]
    assert len(won) == 1, outcomes
    assert sorted(o[1] for o in outcomes if o not in won) == ["ClaimConflictError"] * 3
    run = await store.get_run("run-1")
    assert run is not None and run.claim is not None
    assert (run.epoch, run.claim.worker_id) == (1, won[0][0])


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from checkpoint.stores.file import FileStore
    from tests.conformance.builders import checkpoint

    async def main() -> None:
        store = FileStore(sys.argv[1])
        seq = 0
        while True:
            await store.put(checkpoint("run-1", seq, output={"blob": "x" * 20000}))
            print(seq, flush=True)
            seq += 1

    asyncio.run(main())
    """
)


async def test_sigkill_mid_writes_leaves_only_whole_checkpoints(store: FileStore) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITER,
        str(store.directory),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        acknowledged = -1
        while acknowledged < 20:
            line = await proc.stdout.readline()
            assert line, "the writer process died early"
            acknowledged = int(line)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    listed = await store.list_checkpoints("run-1", limit=10_000)
    seqs = [s.seq for s in listed]
    assert seqs == list(range(seqs[0], -1, -1))  # no hole, nothing partial
    assert seqs[0] >= acknowledged  # everything acknowledged is there
    for seq in seqs:
        cp = await store.get("run-1", seq)
        assert cp is not None and cp.seq == seq
    run = await store.get_run("run-1")
    assert run is not None and run.latest_seq in (seqs[0], seqs[0] - 1)


async def test_unknown_runs_leave_no_files(store: FileStore) -> None:
    with pytest.raises(RunNotFoundError):
        await store.claim("ghost", "worker-a", 30)
    with pytest.raises(RunNotFoundError):
        await store.submit_input("ghost", "review", True)
    assert await store.delete_run("ghost") is False
    assert await store.consume_inputs("ghost", ["review"]) == []
    assert await store.prune("ghost", 1) == 0
    assert not store.directory.exists()
