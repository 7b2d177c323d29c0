"""Timeouts: a batch that stops making progress ends timed out, and Prefect retries it like any transient failure.

A GPU that stops answering, or a storage call inside the optimisation that never returns, would otherwise
stall a nightly run for good. A hung call cannot be interrupted from outside its thread, so the optimisation
runs in a thread of its own and the task's thread watches it: once no iteration has finished for too long,
the task gives the thread up and raises `BatchTimedOut`. Should the thread ever go on, its next iteration
raises too, and it ends; if it never does, it stays parked (a daemon) and its memory is freed only when the
process ends.

Too long is a third of the batch's expected duration (its planned iterations times the seconds an iteration
has taken so far), and never less than the run's `stall_seconds`, which alone applies until the first
iteration has been measured (the encoder, the targets and a cold device come before it).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")
STALL_SECONDS = 300.0  # the default least time without an iteration before a batch is timed out
STALL_SHARE = 1 / 3  # of the expected duration, without an iteration, before a batch is timed out
GRACE_SECONDS = 2.0  # for a slow optimisation to notice it was timed out and end before it is given up


class BatchTimedOut(Exception):
    """No iteration for longer than the batch's limit: transient, so retried (from the newest checkpoint)."""


class Watchdog:
    """Watches one batch's optimisation: `tick` is its per-iteration callback, `run` runs it and waits."""

    def __init__(self, planned_iterations: int, stall_seconds: float, pairs: str = "the batch"):
        self.planned = planned_iterations
        self.pairs = pairs
        self.floor = stall_seconds
        self.started = time.monotonic()
        self.last = self.started
        self.done: Counter[int] = Counter()  # evaluations per image: the batch's iterations are its most advanced image's
        self.timed_out: BatchTimedOut | None = None

    def tick(self, index: int) -> None:
        if self.timed_out is not None:  # given up on meanwhile: this thread's work is no longer wanted
            raise self.timed_out
        self.done[index] += 1
        self.last = time.monotonic()

    @property
    def iterations(self) -> int:
        return max(self.done.values(), default=0)

    def limit(self) -> float:
        """The longest time without an iteration that is not yet a stall."""
        if not self.iterations:
            return self.floor
        seconds_per_iteration = (self.last - self.started) / self.iterations
        return max(self.floor, STALL_SHARE * self.planned * seconds_per_iteration)

    def stalled_for(self) -> float | None:
        """Seconds since the last iteration, once that is over the limit."""
        quiet = time.monotonic() - self.last
        return quiet if quiet > self.limit() else None

    def run(self, work: Callable[[], T]) -> T:
        """`work()`'s value or exception, from a thread of its own (in this thread's context), or `BatchTimedOut`
        once it stalls and does not end within `GRACE_SECONDS` of being told."""
        future: Future[T] = Future()
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(_fill, future, work), name="stylize-optimise", daemon=True)
        thread.start()
        while True:
            try:
                return future.result(timeout=min(1.0, self.floor / 4))
            except TimeoutError:
                quiet = self.stalled_for()
                if quiet is not None:
                    break
        self.timed_out = BatchTimedOut(
            f"{self.pairs}: no progress for {quiet:.0f} s after {self.iterations} of {self.planned} iterations (limit {self.limit():.0f} s)"
        )
        try:
            return future.result(timeout=GRACE_SECONDS)  # a slow iteration that finishes now raises it, or ends the batch
        except TimeoutError:
            raise self.timed_out from None


def _fill(future: Future, work: Callable[[], T]) -> None:
    try:
        future.set_result(work())
    except BaseException as exc:  # noqa: BLE001 - handed to the watching thread, which raises it
        future.set_exception(exc)
