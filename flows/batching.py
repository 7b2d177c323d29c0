"""Pairs of one output size and options share a device batch; each pair stays its own task.

The pair task is what an operator sees, retries and re-runs, so it stays one per
pair. What is batched is the optimisation beneath it: the flow plans groups (pairs
whose outputs will have one size and one set of options, read from the image
headers) and submits each group's pairs together; each pair task reads and
decodes its own inputs and hands the optimisation to this process's `Batcher`.
The first pair of a group to arrive leads: it waits until the group is full, or
every planned member has arrived or withdrawn (skipped, bad input), or no one has
arrived for `LINGER_SECONDS`; then it leases a device, runs `stylize_batch` for
everyone, and hands each member its own result or error.

A group nobody planned (a Ray worker, a retry, `stylize one`) runs at once, alone.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from stylecore import memory
from stylecore.engine import Job, Result, memory_estimate, resolve_device, stylize_batch
from stylecore.options import StyleOptions

from . import devices

LINGER_SECONDS = 2.0  # a planned member may still be reading its inputs (or the first weights load)
MAX_AUTO_BATCH = 8  # a crash costs a whole batch; bench/bench_gpu.py shows where a GPU stops gaining from more


def group_key(height: int, width: int, options: StyleOptions) -> str:
    """Pairs with one key can share a batch: one output size, one set of options (device included)."""
    digest = hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:12]
    return f"{width}x{height}-{digest}"


# On a CPU a batch pays only where one image leaves the cores idle between layers. Measured on 2 cores
# (bench/bench_throughput.py): SqueezeNet 1.39-1.45x the pairs per hour, VGG 0.96-1.08x (parity, noise).
CPU_BATCHING_PAYS = {"squeezenet1_1"}


def auto_batch_size(options: StyleOptions, height: int, width: int, device: str) -> int:
    """As many images as the memory estimate fits on `device`, at most MAX_AUTO_BATCH; on a CPU, batches only
    for the models measured faster batched there."""
    torch_device = resolve_device(device)
    if torch_device.type == "cpu" and options.model not in CPU_BATCHING_PAYS:
        return 1
    cost = memory_estimate(options, height, width, torch_device)
    return memory.largest_batch(cost, memory.device_budget(torch_device), MAX_AUTO_BATCH)


@dataclass
class _Member:
    job: Job
    on_iteration: Callable | None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: object = None


@dataclass
class _Group:
    limit: int
    members: list[_Member] = field(default_factory=list)
    last_arrival: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, linger: float = LINGER_SECONDS):
        self.linger = linger
        self._cond = threading.Condition()
        self._expected: Counter = Counter()  # planned members not yet arrived or withdrawn, per group
        self._open: dict[Hashable, _Group] = {}
        self.batches_run: list[int] = []  # sizes, for the log and the tests

    def expect(self, keys: list[Hashable]) -> None:
        with self._cond:
            self._expected.update(keys)

    def withdraw(self, key: Hashable | None) -> None:
        """A planned member that will not arrive (skipped, failed before optimising)."""
        if key is None:
            return
        with self._cond:
            if self._expected[key] > 0:
                self._expected[key] -= 1
            self._cond.notify_all()

    def run(self, key: Hashable, job: Job, options: StyleOptions, limit: int, on_iteration=None, **engine_kwargs) -> Result:
        """This pair's result (or its own error raised); blocks while its batch gathers and runs."""
        member = _Member(job, on_iteration)
        with self._cond:
            planned = self._expected[key] > 0
            if planned:
                self._expected[key] -= 1
            group = self._open.get(key) if planned else None
            leader = group is None
            if leader:
                group = _Group(max(1, limit))
                if planned:
                    self._open[key] = group
            group.members.append(member)
            group.last_arrival = time.monotonic()
            if len(group.members) >= group.limit:
                self._close(key, group)  # full: whoever comes next starts the next batch
            self._cond.notify_all()
            if leader and planned:
                while not self._ready(key, group):
                    self._cond.wait(timeout=max(0.01, group.last_arrival + self.linger - time.monotonic()))
                self._close(key, group)
        if leader:
            self._execute(group, options, engine_kwargs)
        member.done.wait()
        if isinstance(member.outcome, BaseException):
            raise member.outcome
        return member.outcome

    def _close(self, key, group: _Group) -> None:
        if self._open.get(key) is group:
            del self._open[key]

    def _ready(self, key, group: _Group) -> bool:
        return (
            len(group.members) >= group.limit
            or self._expected[key] <= 0
            or time.monotonic() - group.last_arrival >= self.linger
        )

    def _execute(self, group: _Group, options: StyleOptions, engine_kwargs: dict) -> None:
        members = group.members
        self.batches_run.append(len(members))

        def on_iteration(index, record):
            callback = members[index].on_iteration
            if callback is not None:
                callback(record)

        try:
            with devices.pool().lease() as device:
                run_options = options if options.device != "auto" else options.merged({"device": device})
                outcomes = stylize_batch(
                    [m.job for m in members], run_options, on_iteration, max_batch=group.limit, **engine_kwargs
                )
        except BaseException as exc:  # the whole batch failed (out of memory everywhere, a crash): everyone's error
            outcomes = [exc] * len(members)
        for member, outcome in zip(members, outcomes):
            member.outcome = outcome
            member.done.set()


_batcher = Batcher()


def batcher() -> Batcher:
    return _batcher
