"""Locust load profile: runtime pods checkpointing agent runs through a Flowpoint sidecar.

Each Locust user is one runtime pod. It drives several runs at once, and for each run:

* saves checkpoints seq 1..N as OTLP/HTTP protobuf exports (``POST /v1/traces``; span
  ``checkpoint.save``, sizes from :mod:`load.profiles`: mostly 1-16 KB, some 64-256 KB,
  rarely 1 MB) and checks each answer is ``200`` with ``Flowpoint-Outcome: stored``;
* reads what it saved, as a resuming worker does (``GET .../checkpoints/latest`` and
  ``GET /v1/runs/{run_id}``), and checks the sidecar returns the seq and SHA-256 it
  acknowledged last;
* hands runs over to a standby worker (``POST .../claim``, saves fenced by the new epoch,
  ``.../claim/renew``, ``.../claim/release``), sometimes racing a rival worker whose claim
  must be refused (409) and a zombie writer whose stale-epoch save must be refused (409);
* answers runs that ended ``pending_input`` (``POST .../inputs``, 202; a second device
  answering the same input must get 409), then resumes them: claim, consume the answer,
  save the ``completed`` checkpoint, release;
* sends its other telemetry (ordinary spans) to the same OTLP endpoint.

Requests are named by route pattern. A 409 the profile provokes on purpose counts as a
success; every other non-2xx answer, a wrong outcome and any mismatch of what was read
back count as failures.

SLO thresholds set the exit code (see :func:`_check_slo`): p99 of checkpoint saves under
``--slo-save-p99-ms`` (100 ms) and failures under ``--slo-error-ratio`` (1%) of requests.

    locust -f load/locustfile.py --headless -u 20 -r 20 -t 30s --host http://127.0.0.1:4318
    python -m load.run_load        # starts a sidecar, runs this profile, writes reports
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from collections import Counter, deque
from typing import Any, Final

import gevent
from locust import FastHttpUser, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

try:
    from load import profiles
except ModuleNotFoundError:  # `locust -f load/locustfile.py` puts only load/ on sys.path
    import profiles  # type: ignore[no-redef]

from checkpoint.models import CheckpointStatus

log = logging.getLogger("flowpoint.load")

SAVE: Final = "POST /v1/traces"
SAVE_STALE: Final = "POST /v1/traces (stale epoch)"
TELEMETRY: Final = "POST /v1/traces (telemetry)"
GET_RUN: Final = "GET /v1/runs/{run_id}"
GET_LATEST: Final = "GET /v1/runs/{run_id}/checkpoints/latest"
LIST_CHECKPOINTS: Final = "GET /v1/runs/{run_id}/checkpoints"
LIST_RUNS: Final = "GET /v1/runs"
CLAIM: Final = "POST /v1/runs/{run_id}/claim"
RENEW: Final = "POST /v1/runs/{run_id}/claim/renew"
RELEASE: Final = "POST /v1/runs/{run_id}/claim/release"
SUBMIT_INPUT: Final = "POST /v1/runs/{run_id}/inputs"
CONSUME_INPUT: Final = "POST /v1/runs/{run_id}/inputs/consume"

PROTOBUF_HEADERS: Final = {"Content-Type": profiles.PROTOBUF}
LEASE_SECONDS: Final = 60
# Unique per load process, so repeated runs against one database never reuse a run id.
RUN_PREFIX: Final = f"ld{os.getpid() % 100000:05d}{os.urandom(3).hex()}"
_pod_numbers = itertools.count(1)
# Stored checkpoints by payload size class (reported in slo.json to show the mix was real).
PAYLOAD_MIX: Counter[str] = Counter()
LARGEST_PAYLOAD = [0]


# -- options ----------------------------------------------------------------------------------


def _options(parser: Any) -> None:
    parser.add_argument(
        "--slo-save-p99-ms",
        type=float,
        default=100.0,
        env_var="FLOWPOINT_LOAD_SLO_SAVE_P99_MS",
        help="SLO: p99 of checkpoint saves (POST /v1/traces) must be under this (ms).",
    )
    parser.add_argument(
        "--slo-error-ratio",
        type=float,
        default=0.01,
        env_var="FLOWPOINT_LOAD_SLO_ERROR_RATIO",
        help="SLO: unexpected failures must stay under this share of all requests.",
    )
    parser.add_argument(
        "--slo-report",
        default="",
        env_var="FLOWPOINT_LOAD_SLO_REPORT",
        help="Write the SLO verdict as JSON to this file.",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--runs-per-pod",
        type=int,
        default=3,
        env_var="FLOWPOINT_LOAD_RUNS_PER_POD",
        help="Runs each pod (user) drives at once.",
    )
    parser.add_argument(
        "--think-min-ms",
        type=float,
        default=50.0,
        env_var="FLOWPOINT_LOAD_THINK_MIN_MS",
        help="Shortest pause between a pod's steps (an LLM call, a tool) in ms.",
    )
    parser.add_argument(
        "--think-max-ms",
        type=float,
        default=250.0,
        env_var="FLOWPOINT_LOAD_THINK_MAX_MS",
        help="Longest pause between a pod's steps in ms.",
    )
    parser.add_argument(
        "--load-seed",
        type=int,
        default=None,
        env_var="FLOWPOINT_LOAD_SEED",
        help="Seed the pods' choices (run kinds, sizes, endings) for a repeatable mix.",
    )
    parser.add_argument(
        "--tenant-id",
        default="default",
        env_var="FLOWPOINT_LOAD_TENANT_ID",
        help="Tenant of the checkpoints (must be the token's tenant when tokens are on).",
    )
    parser.add_argument(
        "--bearer-token",
        default="",
        env_var="FLOWPOINT_LOAD_TOKEN",
        help="Bearer token for a sidecar with --tokens-file.",
        is_secret=True,
    )


events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]


def _opt(env: Environment, name: str, default: Any) -> Any:
    options = env.parsed_options
    value = getattr(options, name, None) if options is not None else None
    return default if value is None else value


# -- the pod -----------------------------------------------------------------------------------


class RuntimePod(FastHttpUser):
    """One runtime pod: several runs in flight, each checkpointed, read, claimed, answered."""

    network_timeout = 30.0
    connection_timeout = 10.0
    # The locustfile is also used by docker-compose against http://sidecar:4318.
    host = "http://127.0.0.1:4318"

    def wait_time(self) -> float:
        lo = float(_opt(self.environment, "think_min_ms", 50.0))
        hi = float(_opt(self.environment, "think_max_ms", 250.0))
        return self.rng.uniform(lo, max(lo, hi)) / 1000.0

    def on_start(self) -> None:
        number = next(_pod_numbers)
        self.pod = f"{RUN_PREFIX}-p{number}"
        seed = _opt(self.environment, "load_seed", None)
        self.rng = random.Random(None if seed is None else seed * 1_000_003 + number)
        self.tenant = str(_opt(self.environment, "tenant_id", "default"))
        token = str(_opt(self.environment, "bearer_token", ""))
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.run_counter = itertools.count(1)
        self.active: list[profiles.RunState] = []
        self.done: deque[profiles.RunState] = deque(maxlen=64)
        self.pending: list[profiles.RunState] = []
        self.answered: list[profiles.RunState] = []
        self.last_sha: dict[str, str] = {}
        for _ in range(max(1, int(_opt(self.environment, "runs_per_pod", 3)))):
            self.active.append(self._new_run())

    # -- helpers ---------------------------------------------------------------------------

    def _new_run(self) -> profiles.RunState:
        return profiles.new_run(self.rng, f"{self.pod}-r{next(self.run_counter)}")

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.auth, **(extra or {})}

    def _retire(self, run: profiles.RunState) -> None:
        """Take ``run`` out of the active set and start a fresh one in its place."""
        if run in self.active:
            self.active[self.active.index(run)] = self._new_run()

    def _finished(self, run: profiles.RunState) -> None:
        self._retire(run)
        if run.status is CheckpointStatus.PENDING_INPUT:
            self.pending.append(run)
        else:
            self.done.append(run)

    def _stored_runs(self) -> list[profiles.RunState]:
        return [r for r in self.active if r.seq > 0] + list(self.done)

    def _save(
        self,
        run: profiles.RunState,
        status: CheckpointStatus,
        *,
        epoch: int | None = None,
        name: str = SAVE,
        expect_conflict: bool = False,
    ) -> bool:
        """POST checkpoint ``run.seq + 1``; True when it was stored (or refused as expected)."""
        seq = run.seq + 1
        enc = profiles.encode_save(
            run,
            seq,
            status,
            epoch=run.epoch if epoch is None else epoch,
            pod=self.pod,
            tenant_id=self.tenant,
        )
        with self.client.post(
            "/v1/traces",
            data=enc.body,  # type: ignore[arg-type]  # bytes are sent as is; the hint is narrow
            headers=self._headers(PROTOBUF_HEADERS),
            name=name,
            catch_response=True,
        ) as resp:
            code = resp.status_code
            if expect_conflict:
                if code == 409:
                    resp.success()
                    return True
                resp.failure(f"a stale-epoch save of {run.run_id}#{seq} got {code}, not 409")
                return False
            if code != 200:
                resp.failure(f"save {run.run_id}#{seq}: {code} {_brief(resp.text)}")
                return False
            outcome = resp.headers.get("Flowpoint-Outcome")
            if outcome is not None and outcome != "stored":
                resp.failure(f"save {run.run_id}#{seq}: outcome {outcome!r}, expected 'stored'")
                return False
            resp.success()
        run.seq = seq
        run.status = status
        self.last_sha[run.run_id] = enc.sha256
        PAYLOAD_MIX[profiles.size_class(enc.raw_size)] += 1
        LARGEST_PAYLOAD[0] = max(LARGEST_PAYLOAD[0], enc.raw_size)
        return True

    def _claim(
        self, run: profiles.RunState, worker: str, *, expect_conflict: bool = False
    ) -> int | None:
        """Claim ``run`` for ``worker``: its new epoch, or None."""
        with self.client.post(
            f"/v1/runs/{run.run_id}/claim",
            json={"worker_id": worker, "lease_seconds": LEASE_SECONDS},
            headers=self._headers(),
            name=CLAIM,
            catch_response=True,
        ) as resp:
            if expect_conflict:
                if resp.status_code == 409:
                    resp.success()
                else:
                    resp.failure(f"a rival claim of held run {run.run_id} got {resp.status_code}")
                return None
            if resp.status_code != 200:
                resp.failure(f"claim {run.run_id}: {resp.status_code} {_brief(resp.text)}")
                return None
            body = resp.json()
            checkpoint = body.get("checkpoint") or {}
            if body.get("seq") != run.seq or checkpoint.get("sha256") != self.last_sha.get(
                run.run_id
            ):
                resp.failure(
                    f"claim {run.run_id}: resumed at seq {body.get('seq')} "
                    f"(sha {str(checkpoint.get('sha256'))[:12]}), expected seq {run.seq}"
                )
                return None
            resp.success()
            return int(body["epoch"])

    def _release(self, run: profiles.RunState, worker: str, epoch: int) -> None:
        with self.client.post(
            f"/v1/runs/{run.run_id}/claim/release",
            json={"worker_id": worker, "epoch": epoch},
            headers=self._headers(),
            name=RELEASE,
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                resp.success()
            else:
                resp.failure(f"release {run.run_id}: {resp.status_code} {_brief(resp.text)}")
        run.claimed_by = None

    def _advance(self, run: profiles.RunState) -> None:
        """The run's next step: save the next checkpoint, and wrap the run up when last."""
        if run.claimed_by is not None and run.seq % 5 == 4:
            self._renew(run)
        if not self._save(run, run.next_status()):
            self._retire(run)  # its seq is now uncertain: a real worker would resume it
            return
        if run.finished:
            if run.claimed_by is not None:
                self._release(run, run.claimed_by, run.epoch)
            self._finished(run)

    def _renew(self, run: profiles.RunState) -> None:
        assert run.claimed_by is not None
        with self.client.post(
            f"/v1/runs/{run.run_id}/claim/renew",
            json={"worker_id": run.claimed_by, "epoch": run.epoch, "lease_seconds": LEASE_SECONDS},
            headers=self._headers(),
            name=RENEW,
            catch_response=True,
        ) as resp:
            if resp.status_code == 200 and resp.json().get("epoch") == run.epoch:
                resp.success()
            else:
                resp.failure(f"renew {run.run_id}: {resp.status_code} {_brief(resp.text)}")

    # -- tasks (weights: saves dominate, as in a real pod) -----------------------------------

    @task(40)
    def save_checkpoint(self) -> None:
        """An agent loop or a node finished: checkpoint the run."""
        self._advance(self.rng.choice(self.active))

    @task(8)
    def resume_read(self) -> None:
        """A worker resuming a run reads its latest checkpoint and summary."""
        stored = self._stored_runs()
        if not stored:
            self.save_checkpoint()
            return
        run = self.rng.choice(stored)
        with self.client.get(
            f"/v1/runs/{run.run_id}/checkpoints/latest",
            headers=self._headers(),
            name=GET_LATEST,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"latest {run.run_id}: {resp.status_code} {_brief(resp.text)}")
            else:
                body = resp.json()
                if body.get("seq") != run.seq or body.get("sha256") != self.last_sha.get(
                    run.run_id
                ):
                    resp.failure(
                        f"latest {run.run_id}: seq {body.get('seq')}, expected {run.seq} "
                        "(or another SHA-256 than acknowledged)"
                    )
                else:
                    resp.success()
        with self.client.get(
            f"/v1/runs/{run.run_id}", headers=self._headers(), name=GET_RUN, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"run {run.run_id}: {resp.status_code} {_brief(resp.text)}")
                return
            body = resp.json()
            if body.get("latest_seq") != run.seq or body.get("status") != str(run.status):
                resp.failure(
                    f"run {run.run_id}: latest_seq {body.get('latest_seq')} status "
                    f"{body.get('status')}, expected {run.seq} {run.status}"
                )
            else:
                resp.success()

    @task(1)
    def browse(self) -> None:
        """An operator (or the UI) lists runs of a flow, or a run's checkpoints."""
        stored = self._stored_runs()
        if stored and self.rng.random() < 0.5:
            run = self.rng.choice(stored)
            with self.client.get(
                f"/v1/runs/{run.run_id}/checkpoints?limit=10",
                headers=self._headers(),
                name=LIST_CHECKPOINTS,
                catch_response=True,
            ) as resp:
                if resp.status_code != 200:
                    resp.failure(f"checkpoints {run.run_id}: {resp.status_code}")
                    return
                items = resp.json().get("checkpoints", [])
                if not items or items[0].get("seq") != run.seq:
                    resp.failure(f"checkpoints {run.run_id}: newest is not seq {run.seq}")
                else:
                    resp.success()
            return
        flow = self.rng.choice(profiles.RUN_KINDS).flow_id
        with self.client.get(
            f"/v1/runs?flow_id={flow}&limit=20",
            headers=self._headers(),
            name=LIST_RUNS,
            catch_response=True,
        ) as resp:
            if resp.status_code == 200 and isinstance(resp.json().get("runs"), list):
                resp.success()
            else:
                resp.failure(f"list runs: {resp.status_code} {_brief(resp.text)}")

    @task(2)
    def hand_over(self) -> None:
        """A pod restarted: a standby worker claims one of its runs and carries on with it.

        Now and then a rival worker tries to claim the same run (it must get 409), or the
        old worker, not yet dead, saves with its stale epoch (it must get 409 too).
        """
        candidates = [r for r in self.active if r.seq > 0 and r.claimed_by is None]
        if not candidates:
            self.save_checkpoint()
            return
        run = self.rng.choice(candidates)
        old_epoch = run.epoch
        worker = f"{self.pod}-standby"
        epoch = self._claim(run, worker)
        if epoch is None:
            self._retire(run)
            return
        run.epoch, run.claimed_by = epoch, worker
        roll = self.rng.random()
        if roll < 0.25:
            self._claim(run, f"{self.pod}-rival", expect_conflict=True)
        elif roll < 0.35:
            self._save(
                run, CheckpointStatus.ACTIVE, epoch=old_epoch, name=SAVE_STALE, expect_conflict=True
            )

    @task(2)
    def answer_input(self) -> None:
        """A human answers a run waiting for input (sometimes twice, from two devices)."""
        if not self.pending:
            self.save_checkpoint()
            return
        run = self.pending.pop(0)
        answer = profiles.approval_answer(self.rng)
        if not self._submit(run, answer, expect_conflict=False):
            return
        if self.rng.random() < 0.1:
            self._submit(run, answer, expect_conflict=True)
        self.answered.append(run)

    def _submit(self, run: profiles.RunState, answer: Any, *, expect_conflict: bool) -> bool:
        with self.client.post(
            f"/v1/runs/{run.run_id}/inputs",
            json={"path": run.input_path, "answer": answer},
            headers=self._headers(),
            name=SUBMIT_INPUT,
            catch_response=True,
        ) as resp:
            wanted = 409 if expect_conflict else 202
            if resp.status_code == wanted:
                resp.success()
                return True
            resp.failure(
                f"input {run.run_id}/{run.input_path}: {resp.status_code} (expected {wanted}) "
                f"{_brief(resp.text)}"
            )
            return False

    @task(2)
    def resume_answered(self) -> None:
        """Resume an answered run: claim it, consume the answer, complete it, release it."""
        if not self.answered:
            self.save_checkpoint()
            return
        run = self.answered.pop(0)
        epoch = self._claim(run, self.pod)
        if epoch is None:
            return
        run.epoch = epoch
        with self.client.post(
            f"/v1/runs/{run.run_id}/inputs/consume",
            json={"paths": [run.input_path]},
            headers=self._headers(),
            name=CONSUME_INPUT,
            catch_response=True,
        ) as resp:
            if resp.status_code == 200 and resp.json().get("consumed") == [run.input_path]:
                resp.success()
            else:
                resp.failure(f"consume {run.run_id}: {resp.status_code} {_brief(resp.text)}")
        if self._save(run, CheckpointStatus.COMPLETED):
            self.done.append(run)
        self._release(run, self.pod, epoch)

    @task(2)
    def telemetry(self) -> None:
        """The pod's ordinary spans (nodes, LLM calls) go to the same OTLP endpoint."""
        with self.client.post(
            "/v1/traces",
            data=profiles.telemetry_body(self.pod, self.rng),  # type: ignore[arg-type]
            headers=self._headers(PROTOBUF_HEADERS),
            name=TELEMETRY,
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                resp.success()
            else:
                resp.failure(f"telemetry export: {resp.status_code} {_brief(resp.text)}")


def _brief(text: str | None, limit: int = 160) -> str:
    return (text or "").replace("\n", " ")[:limit]


# -- SLO ---------------------------------------------------------------------------------------


def evaluate_slo(env: Environment) -> dict[str, Any]:
    """The SLO verdict from the run's statistics (save p99, unexpected-failure ratio)."""
    p99_limit = float(_opt(env, "slo_save_p99_ms", 100.0))
    ratio_limit = float(_opt(env, "slo_error_ratio", 0.01))
    total = env.stats.total
    saves = env.stats.entries.get((SAVE, "POST"))
    save_count = saves.num_requests if saves is not None else 0
    save_p99 = (
        float(saves.get_response_time_percentile(0.99))
        if saves is not None and save_count
        else None
    )
    error_ratio = total.num_failures / total.num_requests if total.num_requests else None
    # An exception inside a task is a bug in the profile or an answer it could not read.
    exceptions = len(env.runner.exceptions) if env.runner is not None else 0
    checks = {
        "saves_made": save_count > 0,
        "save_p99": save_p99 is not None and save_p99 < p99_limit,
        "error_ratio": error_ratio is not None and error_ratio < ratio_limit,
        "no_task_exceptions": exceptions == 0,
    }
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "save_requests": save_count,
        "save_p99_ms": save_p99,
        "save_p99_limit_ms": p99_limit,
        "requests": total.num_requests,
        "failures": total.num_failures,
        "error_ratio": error_ratio,
        "error_ratio_limit": ratio_limit,
        "task_exceptions": exceptions,
        "payload_mix": dict(PAYLOAD_MIX),
        "largest_payload_bytes": LARGEST_PAYLOAD[0],
    }


def _check_slo(environment: Environment, **_kw: Any) -> None:
    """Set the exit code from the SLO thresholds (workers leave it to the master)."""
    if isinstance(environment.runner, WorkerRunner):
        return
    verdict = evaluate_slo(environment)
    p99 = verdict["save_p99_ms"]
    ratio = verdict["error_ratio"]
    log.info(
        "SLO %s: save p99 %s ms (limit %.0f ms) over %d saves; failures %d of %d requests "
        "= %s (limit %.2f%%)",
        "PASSED" if verdict["passed"] else "FAILED",
        "n/a" if p99 is None else f"{p99:.0f}",
        verdict["save_p99_limit_ms"],
        verdict["save_requests"],
        verdict["failures"],
        verdict["requests"],
        "n/a" if ratio is None else f"{ratio:.3%}",
        verdict["error_ratio_limit"] * 100,
    )
    if not verdict["passed"]:
        failed = ", ".join(k for k, ok in verdict["checks"].items() if not ok)
        log.error("SLO not met: %s", failed)
    environment.process_exit_code = 0 if verdict["passed"] else 1
    if getattr(environment.parsed_options, "csv_prefix", None):
        # Locust rewrites *_stats.csv once a second and not at exit: give its writer one more
        # turn, now that the users are stopped, so the CSV holds the final numbers.
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)
    path = str(_opt(environment, "slo_report", ""))
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(verdict, f, indent=2)


events.quitting.add_listener(_check_slo)  # type: ignore[no-untyped-call]
