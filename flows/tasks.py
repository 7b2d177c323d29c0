"""The Prefect tasks: per pair read and decode, per batch optimise on one device, per pair write.

Each is the unit Prefect retries and shows: a pair's read and write steps carry its id,
so an operator sees every pair, and a bad input or a skip ends that pair's read step
without touching a device. Deterministic failures (`StyleError`) end a task at once in
a `Bad input` state; anything else is taken as transient and raised for Prefect to
retry, and on the last attempt ends the task with one line instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run
from prefect.states import Cancelled, Completed, Failed

from stylecore.engine import stylize_batch
from stylecore.errors import StyleError
from stylecore.planning import planned_iterations
from stylecore.tracking import IterationRecord

from . import checkpoints, claims, devices, outputs, stopping
from .batches import BatchPlan
from .manifest import PairSpec
from .pairs import (
    OptimisedPair,
    PairOutcome,
    PreparedPair,
    decode,
    finished_before,
    read_and_fingerprint,
    remove_leftovers,
    this_worker,
    tidy_finished,
    utc_now,
    write_outputs,
)
from .progress import ProgressReporter, finish_all
from .timeouts import STALL_SECONDS, BatchTimedOut, Watchdog

BAD_INPUT = "Bad input"  # the state name of a deterministic failure: never retried
TIMED_OUT = "TimedOut"  # a batch that stopped making progress, after its last retry (Prefect's name for a timeout)
SKIPPED = "Skipped"  # a pair whose outputs are already there, made from the same inputs, options, weights and code


Optimised = OptimisedPair | StyleError | PairOutcome  # a member's result, its own failure, or done meanwhile


def _retry_unless_bad_input(task, task_run, state) -> bool:
    return state.name != BAD_INPUT and not stopping.requested()  # a run asked to stop retries nothing


def ended(label: str, retries: int, step: Callable[[], Any]):
    """`step()`'s value, or the state that ends the task: `Bad input` for a `StyleError`, `Cancelled` for a stop; for
    anything else, raise while Prefect has retries left (and no stop was asked for), then end `Failed` with one line."""
    logger = get_run_logger()
    try:
        return step()
    except StyleError as exc:
        logger.error("%s: %s", label, exc)
        return Failed(name=BAD_INPUT, message=f"{exc}")
    except stopping.StopRequested as exc:
        logger.warning("%s: %s", label, exc)
        return Cancelled(message=f"{exc}")
    except Exception as exc:
        attempt = task_run.run_count or 1
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if attempt > retries or stopping.requested():
            logger.error("%s: %s (gave up after %d attempt%s)", label, reason, attempt, "s" * (attempt > 1))
            name = TIMED_OUT if isinstance(exc, BatchTimedOut) else "Failed"
            return Failed(name=name, message=f"{reason} (after {attempt} attempt{'s' * (attempt > 1)})")
        logger.warning("%s: %s (attempt %d of %d, will retry)", label, reason, attempt, retries + 1)
        logger.debug("%s: traceback of attempt %d", label, attempt, exc_info=True)
        raise


TASK_OPTIONS = dict(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_retry_unless_bad_input)


@task(name="read-pair", task_run_name="{pair.id}", **TASK_OPTIONS)
def read_pair(pair: PairSpec, retries: int = 0):
    """Read and fingerprint the inputs; skip a pair already done; decode what must run."""

    def step():
        read = read_and_fingerprint(pair)
        done = finished_before(pair, read.fingerprint)
        if done is not None:
            _tidy_skipped(pair)
            get_run_logger().info("%s: unchanged since its last run, skipped", pair.id)
            return Completed(name=SKIPPED, message="outputs already made from the same inputs", data=done)
        if remove_leftovers(pair):
            get_run_logger().info("%s: removed temporary files a stopped run left behind", pair.id)
        return decode(read)

    return ended(pair.id, retries, step)


def _tidy_skipped(pair: PairSpec) -> None:
    try:
        tidy_finished(pair)
    except Exception as exc:  # leftovers are harmless beside a finished pair: never a reason to fail it
        get_run_logger().warning("%s: could not remove a leftover claim or checkpoint: %s", pair.id, exc)


@task(name="optimise-batch", task_run_name="{batch.label}", **TASK_OPTIONS)
def optimise_batch(
    batch: BatchPlan, members: list[PreparedPair], device: str, runner: str, memory_limit: int | None = None, retries: int = 0,
    stall_seconds: float = STALL_SECONDS,
) -> list[Optimised]:
    """One batch on one device: each member's result, or its own deterministic error."""

    def step():
        stopping.check()  # a batch that reaches here after a stop ends at once
        reporters: list[ProgressReporter] = []
        with devices.lease(device) if runner == "local" else nullcontext(device):
            optimised = optimise_members(batch, members, OnDevice(device, runner, memory_limit, stall_seconds), reporters)
        finish_all(reporters)  # after the lease: the next batch need not wait for the dashboard
        return optimised

    return ended(batch.label, retries, step)


@dataclass(frozen=True)
class OnDevice:
    """Where and how a batch optimises."""

    device: str
    runner: str
    memory_limit: int | None
    stall_seconds: float


def optimise_members(batch: BatchPlan, members: list[PreparedPair], where: OnDevice, reporters: list[ProgressReporter]) -> list[Optimised]:
    """Members of one decoded size and options optimise together; a member whose header misled the plan
    optimises in a group of its own, on the same lease. Members another run finished while this batch waited
    for its device (or an earlier attempt of this one wrote), or is making now, are not optimised here; the
    others are claimed for this run before the device starts."""
    logger = get_run_logger()
    this_run, run_name = str(flow_run.get_id()), flow_run.get_name() or "?"
    done: dict[int, Optimised] = {}
    groups: dict[tuple, list[int]] = {}
    for index, member in enumerate(members):
        settled = settled_elsewhere(member, this_run)
        if settled is not None:
            done[index] = settled
        else:
            claims.take(member.pair, member.fingerprint, this_run, run_name)
            groups.setdefault((member.size, member.pair.options), []).append(index)
    if len(groups) > 1:
        logger.info("%s: decoded sizes differ from the headers: %d groups", batch.label, len(groups))
    for (size, options), indices in groups.items():
        group = [members[i] for i in indices]
        done.update(zip(indices, _optimise_group(batch, group, options, where, reporters)))
    return [done[i] for i in range(len(members))]


def settled_elsewhere(member: PreparedPair, this_run: str) -> PairOutcome | None:
    """The member's outcome if another run has finished it since this batch was planned, or holds it now."""
    finished = finished_before(member.pair, member.fingerprint)
    if finished is not None:
        return finished
    claim = claims.holder(member.pair, member.fingerprint, this_run, claims.flow_run_has_ended)
    if claim is None:
        return None
    pair = member.pair
    return PairOutcome(pair.id, "skipped", pair.content, pair.style, note=f"being made by run {claim.run_name} on {claim.host}")


def _optimise_group(batch, group: list[PreparedPair], options, where: OnDevice, finished_reporters) -> list[Optimised]:
    logger = get_run_logger()
    planned = planned_iterations(options, *group[0].size)
    reporters = [ProgressReporter(m.pair.id, planned, logger) for m in group]
    run_options = options if where.runner != "local" or options.device != "auto" else options.merged({"device": where.device})
    resume = [checkpoints.load(m.pair, m.fingerprint, m.size, logger) for m in group]
    weights = outputs.weights_for(options)  # before the watchdog: a first download makes no iterations
    watchdog = Watchdog(planned, where.stall_seconds, ", ".join(m.pair.id for m in group))
    writer = checkpoints.Writer(logger)
    started = utc_now()

    def on_iteration(index: int, record: IterationRecord) -> None:
        watchdog.tick(index)
        reporters[index](record)

    try:
        results = watchdog.run(lambda: stylize_batch(
            [m.job() for m in group], run_options, on_iteration, weights=weights, memory_limit=where.memory_limit,
            max_batch=batch.limit, on_checkpoint=lambda i, state: writer.submit(group[i].pair, group[i].fingerprint, state),
            resume=resume,
        ))
    except BaseException:
        writer.close(flush=True)  # the retry, or the next run, goes on from the newest state
        raise
    ended_early = [result for result in results if isinstance(result, (stopping.StopRequested, BatchTimedOut))]
    writer.close(flush=bool(ended_early))  # finished pairs need no pending state; their outputs' write removes the file
    if ended_early:  # a stop or a timeout ends the whole batch (each image recorded it as its own error)
        raise ended_early[0]
    finished_reporters += [r for r, result in zip(reporters, results) if not isinstance(result, Exception)]
    span = (started, utc_now())
    return [
        _optimised(member, result, state, batch, where.runner, span, logger)
        for member, result, state in zip(group, results, resume)
    ]


def _optimised(member: PreparedPair, result, checkpoint, batch: BatchPlan, runner: str, span: tuple, logger) -> Optimised:
    """A member's result as the write step takes it, said in the log."""
    if isinstance(result, Exception):
        return result if isinstance(result, StyleError) else StyleError(f"{type(result).__name__}: {result}")
    worker = this_worker(str(result.plan.device), _ray_node() if runner == "ray" else None)
    together = f" in a batch of {result.batch_size}" if result.batch_size > 1 else ""
    resumed = f", resumed from its checkpoint at iteration {result.resumed_from}" if result.resumed_from else ""
    if checkpoint is not None and not result.resumed_from:
        logger.info("%s: its checkpoint does not fit this run's plan (another device's memory?): made from the start", member.pair.id)
    logger.info("%s: optimised on %s%s in %.1fs%s", member.pair.id, worker.device, together, result.seconds, resumed)
    for note in result.fallbacks:
        logger.warning("%s: %s", member.pair.id, note)
    return OptimisedPair(member, result, worker, batch.limit, *span)


def _ray_node() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@task(name="write-pair", task_run_name="{pair.id}: write", **TASK_OPTIONS)
def write_pair(pair: PairSpec, optimised: list[Optimised], index: int, runner: str, retries: int = 0):
    """The pair's outputs, meta.json last; or the pair's own failure from its batch."""
    item = optimised[index]
    if isinstance(item, PairOutcome):
        return Completed(name=SKIPPED, message=item.note or "finished meanwhile by another run", data=item)
    if isinstance(item, StyleError):
        return ended(pair.id, retries, lambda: _raise(item))
    return ended(pair.id, retries, lambda: write_outputs(item, runner))


def _raise(error: Exception):
    raise error


def outcome_of(pair: PairSpec, state, result: Callable[[], Any]) -> PairOutcome:
    """A finished read or write task's state as the pair's outcome."""
    if state.is_completed() and state.name in (SKIPPED, "Completed"):
        value = result()
        if isinstance(value, PairOutcome):
            return value
    return PairOutcome.failed(pair, state.message or state.name)
