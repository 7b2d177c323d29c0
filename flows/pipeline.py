"""The Prefect flows: a manifest run, and a re-run of a report's failed pairs.

A run plans batches from the images' headers, then moves each batch through three
steps: read (a task per pair), optimise (a task per batch, on one device) and write
(a task per pair). The futures Prefect returns are the only coordination: the flow
submits a step once the one before it has finished, and keeps at most two batches
in flight per device, so memory stays flat however long the manifest. Where the
tasks run is the runner's business: threads on this host, a Ray cluster, or child
flow runs of a GPU deployment (one pod each) that run their share the same way.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed
from pydantic import ValidationError

import stylecore.weights

from . import report as report_mod, stopping, storage
from .batches import BatchPlan, plan_batches
from .dispatch import Dispatch, dispatch
from .manifest import BadManifest, LoadedManifest, PairSpec, load as load_manifest, slug
from .pairs import PairOutcome
from .progress import artifact_key
from .tasks import BAD_INPUT, SKIPPED, optimise_batch, outcome_of, read_pair, write_pair

Runner = Literal["local", "ray", "deployment"]


# --- one batch's way through the steps ---------------------------------------------------------------


class BatchInFlight:
    """A planned batch between its steps: the futures of the step it waits on, and what has been decided."""

    def __init__(self, plan: BatchPlan, reads: list[PrefectFuture]):
        self.plan = plan
        self.reads = reads
        self.waiting: set[PrefectFuture] = set(reads)
        self.device: str | None = None
        self.optimise: PrefectFuture | None = None
        self.members: list[PairSpec] = []
        self.writes: list[PrefectFuture] = []
        self.outcomes: dict[str, PairOutcome] = {}
        self.finished = False


class Steps:
    """The three tasks with a run's retries and options, submitted through one runner."""

    def __init__(self, loaded: LoadedManifest, runner: Dispatch):
        settings = loaded.manifest
        self.retries = settings.retries
        self.stall_seconds = settings.stall_seconds
        self.runner = runner
        self.busy: list[str] = []  # the device of every batch optimising or queued for its device, one entry each
        self.memory_limit = int(settings.memory_limit_gb * 2**30) if settings.memory_limit_gb else None
        retry = dict(retries=settings.retries, retry_delay_seconds=settings.retry_delay_seconds)
        self.read, self.optimise, self.write = (t.with_options(**retry) for t in (read_pair, optimise_batch, write_pair))

    def start(self, plan: BatchPlan) -> BatchInFlight:
        return BatchInFlight(plan, [self.runner.submit(self.read, pair=pair, retries=self.retries) for pair in plan.pairs])

    def advance(self, batch: BatchInFlight) -> None:
        """The batch's current step has finished: submit the next one, or settle its outcomes."""
        if batch.optimise is None:
            self._after_reads(batch)
        elif not batch.writes:
            self.busy.remove(batch.device)
            self._after_optimise(batch)
        else:
            for pair, future in zip(batch.members, batch.writes):
                batch.outcomes[pair.id] = outcome_of(pair, future.state, future.result)
            batch.finished = True

    def _after_reads(self, batch: BatchInFlight) -> None:
        members = []
        for pair, future in zip(batch.plan.pairs, batch.reads):
            state = future.state
            if state.is_completed() and state.name != SKIPPED:
                members.append((pair, future))
            else:  # skipped, bad input or failed for good: this pair is settled without a device
                batch.outcomes[pair.id] = outcome_of(pair, state, future.result)
        if not members:
            batch.finished = True
            return
        batch.members = [pair for pair, _ in members]
        batch.device = self.runner.least_busy(self.busy)  # it queues there behind the batch optimising now
        self.busy.append(batch.device)
        batch.optimise = self.runner.submit(
            self.optimise, on_device=True, batch=batch.plan, members=[future for _, future in members],
            device=batch.device, runner=self.runner.name, memory_limit=self.memory_limit, retries=self.retries,
            stall_seconds=self.stall_seconds,
        )
        batch.reads = []
        batch.waiting = {batch.optimise}

    def _after_optimise(self, batch: BatchInFlight) -> None:
        state = batch.optimise.state
        if not state.is_completed():  # the whole batch failed for good: each member says why
            for pair in batch.members:
                batch.outcomes[pair.id] = PairOutcome.failed(pair, state.message or state.name)
            batch.finished = True
            return
        batch.writes = [
            self.runner.submit(self.write, pair=pair, optimised=batch.optimise, index=i, runner=self.runner.name, retries=self.retries)
            for i, pair in enumerate(batch.members)
        ]
        batch.waiting = set(batch.writes)


def run_batches(plans: list[BatchPlan], steps: Steps) -> list[PairOutcome]:
    """Every batch through read → optimise → write, at most `steps.runner.window` batches read or optimising at a time.

    After a stop (see `stopping`) no batch is started; those in flight end quickly (an optimisation within an
    iteration, a batch not yet optimising at once, writes of one already optimised normally), and every pair
    not started ends failed "interrupted (SIGTERM)"."""
    queue, in_flight, outcomes = deque(plans), [], {}
    while (queue and not stopping.requested()) or in_flight:
        while queue and sum(not b.writes for b in in_flight) < steps.runner.window and not stopping.requested():
            in_flight.append(steps.start(queue.popleft()))  # a batch writing its outputs holds no device: read the next
        waiting_on = {future: batch for batch in in_flight for future in batch.waiting}
        future = next(as_completed(list(waiting_on)))
        future.wait()  # already done: this keeps its final state on the future
        batch = waiting_on[future]
        batch.waiting.discard(future)
        if not batch.waiting:
            steps.advance(batch)
        if batch.finished:
            in_flight.remove(batch)
            outcomes.update(batch.outcomes)
    for plan in queue:  # only after a stop
        outcomes.update((pair.id, PairOutcome.failed(pair, stopping.reason())) for pair in plan.pairs)
    return list(outcomes.values())


# --- a run -----------------------------------------------------------------------------------------


def _run_name() -> str:
    parameters = flow_run.parameters or {}
    source = parameters.get("manifest") or parameters.get("report") or "run"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    label = Path(str(source).rstrip("/")).stem
    if label == "report":  # …/_runs/<run>/report.json → name the retry after the run it retries
        label = Path(str(source)).parent.name.split("-2")[0] + "-retry"
    unique = str(flow_run.id or "")[:6]  # two runs started in the same second get their own folders
    return f"{slug(label) or 'run'}-{stamp}" + (f"-{unique}" if unique else "")


def run_pairs(
    loaded: LoadedManifest, pairs: list[PairSpec], runner: Runner, ray_address: str | None, devices: list[str] | None,
    earlier: list[PairOutcome] = (),
) -> dict:
    """Plan the batches, run them on `runner`, and write the report and the artifacts, whatever happened to each pair."""
    logger = get_run_logger()
    began = time.perf_counter()
    logger.info("%d pairs from %s → %s", len(pairs), loaded.uri, loaded.output)
    with stopping.taken_back(), dispatch(runner, ray_address, devices) as target:  # a signal stops, not crashes, the run
        steps = Steps(loaded, target)
        plans = plan_batches(pairs, loaded.manifest.batch_size, target.planning_device, steps.memory_limit)
        _log_plan(plans, target)
        outcomes = run_batches(plans, steps)
    if stopping.requested():
        logger.warning("%s: no new batch started; the report holds what finished", stopping.reason())
    order = {pair.id: i for i, pair in enumerate(pairs)}
    outcomes.sort(key=lambda o: order.get(o.id, -1))
    return write_report(loaded, [*earlier, *outcomes], time.perf_counter() - began)


def _log_plan(plans: list[BatchPlan], target: Dispatch) -> None:
    batched = [p for p in plans if len(p.pairs) > 1]
    get_run_logger().info(
        "%d batches (%d of more than one pair) on %s: %s",
        len(plans), len(batched), target.name, ", ".join(target.devices),
    )


@task(name="store-report", task_run_name="store-report", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[2, 10])
def store_report(report: dict, sheet: bytes) -> None:
    """A task of its own, so a storage hiccup at the very end is retried like any pair's; report.json first."""
    storage.write_bytes(report["report"], report_mod.to_json(report))
    storage.write_bytes(report["contact_sheet"], sheet)


def write_report(loaded: LoadedManifest, outcomes: list[PairOutcome], seconds: float) -> dict:
    name = flow_run.name or _run_name()
    folder = storage.join(loaded.output, "_runs", name)
    pairs = [o.as_dict() for o in outcomes]
    report = {
        "run_name": name,
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "manifest": loaded.uri,
        "output": loaded.output,
        "report": storage.join(folder, "report.json"),
        "contact_sheet": storage.join(folder, "contact_sheet.png"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "counts": report_mod.summary_counts(pairs),
        "flagged": [p["id"] for p in report_mod.flagged(pairs)],
        "device_seconds": report_mod.gpu_seconds_by_device(pairs),
        "pairs": pairs,
    }
    sweeps = {p.id: (p.sweep_of, p.sweep) for p in loaded.pairs if p.sweep}
    sheet = report_mod.contact_sheet(pairs, sweeps)  # built once: it reads every pair's thumbnails
    try:
        store_report(report, sheet)
    except Exception as exc:  # the storage is down for longer than the retries: keep the report here
        fallback = Path(stylecore.weights.cache_dir()) / "reports" / name
        get_run_logger().error(
            "%s: could not write the report to %s (%s); kept it at %s", name, folder, f"{type(exc).__name__}: {exc}", fallback
        )
        report["report"], report["contact_sheet"] = str(fallback / "report.json"), str(fallback / "contact_sheet.png")
        store_report(report, sheet)
    create_table_artifact(report_mod.table_rows(report), key=artifact_key(loaded.name, "summary"), description=f"Pairs of {name}")
    create_markdown_artifact(
        report_mod.markdown(report, report_mod.links_for(report)), key=artifact_key(loaded.name, "report"), description=f"Report of {name}"
    )
    counts = report["counts"]
    get_run_logger().info(
        "%s: %d completed, %d skipped, %d failed; report %s", name, counts["completed"], counts["skipped"], counts["failed"], report["report"]
    )
    if report["flagged"]:
        get_run_logger().warning("%s: %s", name, report_mod.flagged_line(pairs))
    return report


class RunEndedShort(Exception):
    """What a Failed or Cancelled run holds: the reason in one line, and the report for the command line to show.
    (Such a state's data must be an exception: a worker running the deployment raises it.)"""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def _finish(report: dict):
    failed = [p["id"] for p in report["pairs"] if p["status"] == "failed"]
    flagged = "; " + report_mod.flagged_line(report["pairs"]) if report["flagged"] else ""
    if stopping.requested():
        done = len(report["pairs"]) - len(failed)
        message = f"{stopping.reason()}: {done} of {len(report['pairs'])} pairs finished"
        return Cancelled(message=message, data=RunEndedShort(message, report))
    if failed:
        shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        message = f"{len(failed)} of {len(report['pairs'])} pairs failed: {shown}; report: {report['report']}{flagged}"
        return Failed(message=message, data=RunEndedShort(message, report))
    return Completed(message=f"{len(report['pairs'])} pairs done{flagged}", data=report)


# --- spreading a manifest over child flow runs (pods) -------------------------------------------------


def fan_out(loaded: LoadedManifest, pairs: list[PairSpec], deployment: str, shards: int | None) -> dict:
    """Child flow runs of `deployment`, each with a contiguous share of the batches (each one pod with one GPU
    on a Kubernetes pool, batching its share itself); the parent gathers their reports into one."""
    from prefect.deployments import run_deployment
    from prefect.flow_runs import wait_for_flow_run
    from prefect.utilities.asyncutils import run_coro_as_sync

    began = time.perf_counter()
    shares = _shares(pairs, loaded, shards)
    logger = get_run_logger()
    logger.info("%d pairs in %d child flow runs of %s", len(pairs), len(shares), deployment)
    children = [
        run_deployment(
            deployment, timeout=0, as_subflow=True,
            parameters={"manifest": loaded.uri, "output": loaded.output, "pair_ids": [p.id for p in share], "runner": "local"},
        )
        for share in shares
    ]
    outcomes: list[PairOutcome] = []
    for child, share in zip(children, shares):
        finished = run_coro_as_sync(wait_for_flow_run(child.id, timeout=None, log_states=True))
        outcomes += _child_outcomes(loaded, finished, share)
    return write_report(loaded, outcomes, time.perf_counter() - began)


def _shares(pairs: list[PairSpec], loaded: LoadedManifest, shards: int | None) -> list[list[PairSpec]]:
    """Whole batches per share (a batch never spans two pods), about equal in pairs."""
    plans = plan_batches(pairs, loaded.manifest.batch_size, None)
    count = max(1, min(shards or len(plans), len(plans)))
    per_share = math.ceil(len(pairs) / count)
    shares: list[list[PairSpec]] = [[]]
    for plan in plans:
        if len(shares[-1]) >= per_share:
            shares.append([])
        shares[-1].extend(plan.pairs)
    return [share for share in shares if share]


def _child_outcomes(loaded: LoadedManifest, child, share: list[PairSpec]) -> list[PairOutcome]:
    """The child's own report, read from storage; where it wrote none, each of its pairs failed with its state."""
    uri = storage.join(loaded.output, "_runs", child.name, "report.json")
    try:
        pairs = json.loads(storage.read_bytes(uri))["pairs"]
        return [PairOutcome.from_dict(p) for p in pairs]
    except Exception:
        message = f"child flow run {child.name} ended {child.state.name if child.state else 'unknown'}"
        return [PairOutcome.failed(pair, message) for pair in share]


# --- the flows -------------------------------------------------------------------------------------------


def _bad_manifest(manifest: str, exc: BadManifest):
    get_run_logger().error("manifest %s is not valid:\n%s", manifest, exc)
    return Failed(name=BAD_INPUT, message=f"manifest {manifest} is not valid: {len(exc.problems)} problem(s)")


@flow(name="stylize-manifest", flow_run_name=_run_name, persist_result=False, validate_parameters=True)
def stylize_manifest(
    manifest: str,
    output: str | None = None,
    runner: Runner = "local",
    ray_address: str | None = None,
    devices: list[str] | None = None,
    shard_deployment: str | None = None,
    shards: int | None = None,
    pair_ids: list[str] | None = None,
):
    """Stylise every pair of a manifest (or the `pair_ids` share a parent run gave this one); pairs already done
    with the same fingerprint are skipped.

    runner: local (threads on this host, one batch per device at a time), ray (batches as Ray tasks with one GPU
    each on the cluster at `ray_address`, default RAY_ADDRESS) or deployment (`shards` child flow runs of
    `shard_deployment`, e.g. one GPU pod each)."""
    try:
        loaded = load_manifest(manifest, output)
    except BadManifest as exc:
        return _bad_manifest(manifest, exc)
    pairs = loaded.pairs if pair_ids is None else [p for p in loaded.pairs if p.id in set(pair_ids)]
    if runner == "deployment":
        if not shard_deployment:
            return Failed(name=BAD_INPUT, message="runner 'deployment' needs shard_deployment (e.g. stylize-manifest/k8s-gpu)")
        return _finish(fan_out(loaded, pairs, shard_deployment, shards))
    return _finish(run_pairs(loaded, pairs, runner, ray_address or None, devices))


FLAGGED_NEEDS_OVERRIDES = (
    "flagged pairs need a stronger setting to re-run (the same options make the same image and are skipped), "
    "e.g. --style-strength 2 or --iterations 600"
)


@flow(name="stylize-retry-failed", flow_run_name=_run_name, persist_result=False, validate_parameters=True)
def retry_failed(
    report: str,
    runner: Runner = "local",
    ray_address: str | None = None,
    devices: list[str] | None = None,
    flagged: bool = False,
    overrides: dict[str, Any] | None = None,
):
    """Re-run exactly the failed pairs of a report (inputs re-read, so fixed files are picked up), or with `flagged`
    its flagged pairs; `overrides` (options, e.g. {"style_strength": 2}) go on top of each pair's own options."""
    previous = report_mod.load_report(report)
    if flagged and not overrides:
        return Failed(name=BAD_INPUT, message=FLAGGED_NEEDS_OVERRIDES)
    chosen = report_mod.flagged(previous["pairs"]) if flagged else [p for p in previous["pairs"] if p["status"] == "failed"]
    try:
        loaded = load_manifest(previous["manifest"], previous["output"])
    except BadManifest as exc:
        return _bad_manifest(previous["manifest"], exc)
    by_id = {p.id: p for p in loaded.pairs}
    try:
        pairs = [_overridden(by_id[p["id"]], overrides) for p in chosen if p["id"] in by_id]
    except ValidationError as exc:
        from .cli import format_validation_error

        return Failed(name=BAD_INPUT, message=format_validation_error(exc, flags=True))
    gone = [
        PairOutcome(p["id"], "failed", p["content"], p["style"], error="no longer in the manifest")
        for p in chosen
        if p["id"] not in by_id
    ]
    which = "flagged" if flagged else "failed"
    get_run_logger().info("retrying %d %s pairs of %s%s", len(pairs), which, report, f" with {overrides}" if overrides else "")
    if runner == "deployment":
        return Failed(name=BAD_INPUT, message="retry-failed runs on local or ray; run the k8s-gpu deployment for pods")
    return _finish(run_pairs(loaded, pairs, runner, ray_address or None, devices, gone))


def _overridden(pair: PairSpec, overrides: dict[str, Any] | None) -> PairSpec:
    return replace(pair, options=pair.options.merged(overrides)) if overrides else pair
