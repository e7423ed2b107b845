"""Worker chaos: SIGKILL at random points of a 30-node flow, 20 times; resumes never redo work.

A real sidecar subprocess (``flowpoint serve`` on a real PostgreSQL) receives the
checkpoints of worker subprocesses that use :class:`SidecarStore`. The test kills workers
with SIGKILL at random moments (a seeded ``random.Random``: the schedule is reproducible)
and starts a replacement each time, as a restarted pod would: first the dead worker's
outbox is replayed (its unacknowledged checkpoints), then the replacement resumes the run,
waiting for the dead worker's lease to lapse. A run ends when a worker completes it; then
the next run starts, until 10 workers were killed per durability mode (``sync`` and
``async``): 20 kills in all.

Every node execution, and every checkpoint the worker saw acknowledged, is appended to an
execution log (O_APPEND, one write per line: the file order is the order of events across
processes). The stored checkpoint history (pruning off) says which execution's output was
recorded for each node (its ``pid``). The invariants, checked for every run:

* the run completes, every node's output is right, seqs are 1..N without a gap;
* a node's success, once in a stored checkpoint, is never replaced: all checkpoints that
  record it name the same execution, so exactly ONE execution per node both finished and
  was acknowledged; any other execution of it was cut short or never reached the store;
* a node never starts after the checkpoint recording its success exists: before each
  worker starts, the test reads every stored checkpoint, and that worker starts none of
  the nodes recorded there (and no worker starts a node twice);
* every checkpoint a worker saw acknowledged is stored, with that worker's output;
* nothing is left in the outbox, and nothing was refused (``rejected/`` stays empty).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from checkpoint import CheckpointStatus, FlowCheckpoint, NodeStatus
from checkpoint.stores import SidecarStore
from tests.chaos.worker_scripts import execlog
from tests.chaos.worker_scripts.graphs import GRAPHS, expected_values, sinks

ROOT = Path(__file__).resolve().parents[2]
GRAPH = GRAPHS["chaos30"]
NODES = [node_id for node_id, _ in GRAPH]
EXPECTED = expected_values(GRAPH)
KILLS_PER_MODE = 10  # x2 modes = 20 kills
MAX_KILLS_PER_RUN = 5  # then a worker is left alone to finish the run
KILL_WINDOW_S = 1.0  # a kill lands uniformly within this long after the worker owns the run
PROCESS_TIMEOUT_S = 60.0


# -- worker processes ----------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process and what the test knew when it started."""

    proc: asyncio.subprocess.Process
    stdout: Path
    stderr: Path
    #: node -> pids recorded as its producer in the store just before this worker started
    durable_before: dict[str, set[int]]
    killed: bool = False
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


class WorkerPool:
    """Starts worker subprocesses; every one still alive is killed at teardown."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Worker] = []

    async def spawn(self, *args: str, durable_before: dict[str, set[int]]) -> Worker:
        n = len(self.started)
        stdout, stderr = self.folder / f"worker-{n}.out", self.folder / f"worker-{n}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.chaos.worker_scripts.chaos_worker",
                *args,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        worker = Worker(proc, stdout, stderr, durable_before)
        self.started.append(worker)
        return worker

    async def stop_all(self) -> None:
        for worker in self.started:
            if worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()


@pytest.fixture
async def worker_pool(tmp_path: Path) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(tmp_path)
    try:
        yield pool
    finally:
        await pool.stop_all()


async def wait_until_owned(worker: Worker, log: Path) -> bool:
    """Wait for the worker's ``go`` line (it owns the run); False if it exited first."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while True:
        if any(line.kind == "go" and line.pid == worker.pid for line in execlog.read(log)):
            return True
        if worker.proc.returncode is not None:
            return False
        if time.monotonic() > deadline:
            pytest.fail(f"worker {worker.pid} never took the run:\n{worker.output()[-3000:]}")
        await asyncio.sleep(0.01)


# -- the stored history ----------------------------------------------------------------------


class History:
    """Every stored checkpoint of one run, read through the sidecar's resume API."""

    def __init__(self, store: SidecarStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.checkpoints: dict[int, FlowCheckpoint] = {}

    async def refresh(self) -> dict[int, FlowCheckpoint]:
        summaries = await self.store.list_checkpoints(self.run_id, limit=1000)
        for summary in summaries:
            if summary.seq not in self.checkpoints:  # checkpoints are immutable: read once
                cp = await self.store.get(self.run_id, summary.seq)
                assert cp is not None, f"{self.run_id}#{summary.seq} listed but not readable"
                self.checkpoints[summary.seq] = cp
        assert len(summaries) == len(self.checkpoints), "a stored checkpoint disappeared"
        return self.checkpoints

    def producers(self) -> dict[str, set[int]]:
        """node -> pids of the executions recorded as its success, over the whole history."""
        found: dict[str, set[int]] = collections.defaultdict(set)
        for cp in self.checkpoints.values():
            for node_id, state in cp.node_states.items():
                if state.status is NodeStatus.SUCCEEDED:
                    found[node_id].add(int(state.output["pid"]))
        return dict(found)


async def replay_outbox(url: str, outbox: Path) -> int:
    """What a restarted pod does first: deliver the dead worker's unacknowledged checkpoints."""
    store = SidecarStore(url, outbox_dir=outbox, timeout=10.0)
    try:
        return await store.replay_outbox()
    finally:
        await store.close()


# -- the campaign --------------------------------------------------------------------------


@dataclass
class RunRecord:
    run_id: str
    log: Path
    outbox: Path
    workers: list[Worker] = field(default_factory=list)
    replayed: int = 0


@dataclass
class Figures:
    kills: int = 0
    workers: int = 0
    runs: int = 0
    replayed: int = 0
    #: where the kills landed: before any node / inside a node / between nodes
    phases: collections.Counter[str] = field(default_factory=collections.Counter)
    #: executions beyond the first per node, by cause
    reruns: collections.Counter[str] = field(default_factory=collections.Counter)


async def drive_run(
    url: str,
    record: RunRecord,
    durability: str,
    rng: random.Random,
    pool: WorkerPool,
    figures: Figures,
    kill_budget: int,
) -> None:
    """Kill workers of one run up to ``kill_budget`` times, then let one finish it."""
    history = History(SidecarStore(url, timeout=10.0), record.run_id)
    try:
        kills_here = 0
        while True:
            # A restarted pod: replay the dead worker's outbox, then the new worker starts.
            record.replayed += await replay_outbox(url, record.outbox)
            await history.refresh()
            worker = await pool.spawn(
                "--sidecar",
                url,
                "--run-id",
                record.run_id,
                "--log",
                str(record.log),
                "--flow",
                "chaos30",
                "--durability",
                durability,
                "--outbox",
                str(record.outbox),
                "--lease",
                "1.0",
                durable_before=history.producers(),
            )
            record.workers.append(worker)
            figures.workers += 1
            if kills_here < kill_budget and await wait_until_owned(worker, record.log):
                delay = rng.uniform(0.0, KILL_WINDOW_S)
                try:
                    await asyncio.wait_for(asyncio.shield(worker.proc.wait()), delay)
                except TimeoutError:
                    worker.proc.send_signal(signal.SIGKILL)
                    worker.killed = True
            try:
                worker.returncode = await asyncio.wait_for(worker.proc.wait(), PROCESS_TIMEOUT_S)
            except TimeoutError:
                pytest.fail(f"worker {worker.pid} hung:\n{worker.output()[-3000:]}")
            if worker.killed and worker.returncode == -signal.SIGKILL:
                kills_here += 1
                figures.kills += 1
                figures.phases[kill_phase(record.log, worker.pid)] += 1
                continue
            assert worker.returncode == 0, (
                f"worker {worker.pid} ({durability}) failed with {worker.returncode}:\n"
                f"{worker.output()[-4000:]}"
            )
            break
        await history.refresh()
        check_run(record, history, figures)
    finally:
        await history.store.close()


def kill_phase(log: Path, pid: int) -> str:
    lines = [line for line in execlog.read(log) if line.pid == pid]
    started = {line.fields[0] for line in lines if line.kind == "start"}
    ended = {line.fields[0] for line in lines if line.kind == "end"}
    if not started:
        return "before any node"
    return "inside a node" if started - ended else "between nodes"


# -- the invariants ----------------------------------------------------------------------------


def check_run(record: RunRecord, history: History, figures: Figures) -> None:
    run = record.run_id
    checkpoints = history.checkpoints
    lines = execlog.read(record.log)
    last = record.workers[-1]

    # The run completed, with the right values, and its seqs have no gap.
    result = json.loads(last.stdout.read_text().strip().splitlines()[-1])
    assert result["status"] == "completed", result
    assert not result["degraded"], result
    assert result["output"] == {
        s: {"node": s, "pid": result["output"][s]["pid"], "value": EXPECTED[s]}
        for s in sinks(GRAPH)
    }
    seqs = sorted(checkpoints)
    assert seqs == list(range(1, len(seqs) + 1)), f"{run}: seqs {seqs}"
    latest = checkpoints[seqs[-1]]
    assert latest.status is CheckpointStatus.COMPLETED
    assert sorted(latest.node_states) == sorted(NODES)
    for node_id in NODES:
        state = latest.node_states[node_id]
        assert state.status is NodeStatus.SUCCEEDED, (run, node_id, state.status)
        assert state.output["value"] == EXPECTED[node_id], (run, node_id)

    # Successes only accumulate: a later checkpoint keeps every success of an earlier one.
    previous: dict[str, int] = {}
    for seq in seqs:
        now = {
            nid: int(st.output["pid"])
            for nid, st in checkpoints[seq].node_states.items()
            if st.status is NodeStatus.SUCCEEDED
        }
        assert previous.items() <= now.items(), f"{run}#{seq} lost or replaced a success"
        previous = now

    # Exactly one execution per node finished AND was acknowledged (recorded in the store).
    executions: dict[str, list[int]] = collections.defaultdict(list)  # node -> pids, in order
    finished: set[tuple[str, int]] = set()
    for line in lines:
        if line.kind == "start":
            executions[line.fields[0]].append(line.pid)
        elif line.kind == "end":
            finished.add((line.fields[0], line.pid))
    producers = history.producers()
    for node_id in NODES:
        recorded = producers.get(node_id, set())
        assert len(recorded) == 1, f"{run}: {node_id} recorded from executions {recorded}"
        acknowledged = [
            p for p in executions[node_id] if (node_id, p) in finished and p in recorded
        ]
        assert len(acknowledged) == 1, (
            f"{run}: {node_id} has {len(acknowledged)} finished+acknowledged executions"
        )
        for pid in executions[node_id]:
            if pid in recorded:
                continue
            cause = "cut short" if (node_id, pid) not in finished else "finished, never stored"
            figures.reruns[cause] += 1

    # A node never starts once the checkpoint recording its success exists; never twice per
    # process. (Workers run one after another, and each one's `durable_before` was read after
    # the previous one died and its outbox was replayed: nothing else writes in between.)
    for worker in record.workers:
        started = [
            line.fields[0] for line in lines if line.kind == "start" and line.pid == worker.pid
        ]
        assert len(started) == len(set(started)), f"{run}: worker {worker.pid} ran a node twice"
        again = sorted(set(started) & set(worker.durable_before))
        assert not again, (
            f"{run}: worker {worker.pid} started {again}, already recorded as succeeded"
        )

    # Every checkpoint a worker saw acknowledged is stored, holding that worker's output.
    for line in lines:
        if line.kind != "ack":
            continue
        seq, pid, event, node_id = int(line.fields[0]), line.pid, line.fields[2], line.fields[3]
        assert seq in checkpoints, f"{run}#{seq} was acknowledged to {pid} but is not stored"
        if event == "node":
            state = checkpoints[seq].node_states[node_id]
            assert state.status is NodeStatus.SUCCEEDED
            assert int(state.output["pid"]) == pid

    # Nothing left behind in the outbox, nothing refused.
    leftovers = (
        sorted(p.name for p in record.outbox.glob("*.rec")) if record.outbox.exists() else []
    )
    assert leftovers == [], f"{run}: outbox still holds {leftovers}"
    rejected = record.outbox / "rejected"
    assert not rejected.exists() or not any(rejected.iterdir()), f"{run}: records were refused"


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("durability", "seed"), [("sync", 20261127), ("async", 61127)])
async def test_sigkilled_workers_resume_without_redoing_completed_nodes(
    durability: str, seed: int, sidecar_url: str, worker_pool: WorkerPool, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    figures = Figures()
    started = time.monotonic()
    while figures.kills < KILLS_PER_MODE:
        run_id = f"chaos-{durability}-{figures.runs}"
        record = RunRecord(run_id, tmp_path / f"{run_id}.log", tmp_path / f"{run_id}-outbox")
        budget = min(MAX_KILLS_PER_RUN, KILLS_PER_MODE - figures.kills)
        await drive_run(sidecar_url, record, durability, rng, worker_pool, figures, budget)
        figures.runs += 1
        figures.replayed += record.replayed
    elapsed = time.monotonic() - started

    assert figures.kills == KILLS_PER_MODE
    print(
        f"\nworker chaos ({durability}): {figures.kills} SIGKILLs over {figures.runs} runs "
        f"of {len(NODES)} nodes, {figures.workers} worker processes, {elapsed:.1f} s; "
        f"kills landed {dict(figures.phases)}; outbox records replayed: {figures.replayed}; "
        f"re-executions (never acknowledged): {dict(figures.reruns) or 'none'}; "
        f"completed nodes re-executed: 0"
    )
