"""Progress on the dashboard without stalling the optimisation.

Each progress-artifact call is an API round trip, and the server records each one as events
too: over a third of a small pair's orchestration. So a pair's artifact is created with its
first iteration (a pair that never starts has its task run's state instead), then updated
every 10%. The calls go to one background thread per process, which sends only the newest
value per artifact, and nothing when that value is already on the dashboard: a pair that
finishes before its turn comes costs one call, its artifact created at 100%. A batch waits
once, at its end, until its members' final 100% has been sent, so the dashboard never shows
a finished pair as unfinished.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import re
import threading
from dataclasses import dataclass

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from stylecore.tracking import IterationRecord

from . import stopping

PROGRESS_STEPS = 10  # an update (artifact and log line) every 10% of a pair's iterations
_log = logging.getLogger(__name__)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text, e.g. ("progress", pair id)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())[:110].strip("-")


@dataclass
class _Artifact:
    key: str
    description: str
    context: contextvars.Context  # the task run's settings and client, for the sender thread
    id: object = None
    latest: float = 0.0
    shown: float | None = None  # the value the dashboard has


class _Sender:
    def __init__(self):
        self._queue: queue.Queue[tuple[_Artifact, threading.Event | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="stylize-progress", daemon=True)
        self._thread.start()

    def send(self, artifact: _Artifact, sent: threading.Event | None = None) -> None:
        self._queue.put((artifact, sent))

    def _loop(self) -> None:
        while True:
            drained = self._drain()
            due = {id(a): a for a, _ in drained}  # an artifact queued many times is sent once, newest value
            for artifact in due.values():
                try:
                    self._send(artifact)
                except Exception:  # progress is a convenience: a failed update must never fail a pair
                    _log.debug("progress update for %s failed", artifact.key, exc_info=True)
            for _, sent in drained:
                if sent is not None:
                    sent.set()

    def _drain(self) -> list[tuple[_Artifact, threading.Event | None]]:
        batch = [self._queue.get()]
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    @staticmethod
    def _send(artifact: _Artifact) -> None:
        value = artifact.latest
        if value == artifact.shown:
            return
        if artifact.id is None:
            artifact.id = artifact.context.run(create_progress_artifact, value, key=artifact.key, description=artifact.description)
        else:
            artifact.context.run(update_progress_artifact, artifact.id, value)
        artifact.shown = value


_sender: _Sender | None = None
_sender_lock = threading.Lock()


def _get_sender() -> _Sender:
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = _Sender()
        return _sender


class ProgressReporter:
    """The engine's per-iteration callback for one pair: its progress artifact from its first iteration on, and
    an update and a log line every 10%."""

    def __init__(self, pair_id: str, iterations: int, logger):
        self.pair_id, self.logger, self.total = pair_id, logger, iterations
        self.every = max(1, iterations // PROGRESS_STEPS)
        self.artifact = _Artifact(artifact_key("progress", pair_id), f"Stylising {pair_id}", contextvars.copy_context())
        self.started = False

    def __call__(self, record: IterationRecord) -> None:
        stopping.check()  # a run asked to stop ends the optimisation here, within an iteration
        on_step = record.iteration % self.every == 0 or record.iteration == self.total
        if self.started and not on_step:
            return
        self.started = True
        self.artifact.latest = 100.0 * record.iteration / self.total
        _get_sender().send(self.artifact)
        if not on_step:
            return
        self.logger.info(
            "%s: %d/%d iterations, content %.4g, style %.4g, tv %.4g, total %.4g (%.1f s)",
            self.pair_id, record.iteration, self.total, record.content, record.style, record.tv, record.total, record.seconds,
        )

    def finish(self) -> threading.Event:
        """Mark the pair 100% done; the event is set once that has been sent."""
        sent = threading.Event()
        self.artifact.latest = 100.0
        _get_sender().send(self.artifact, sent)
        return sent


def finish_all(reporters: list[ProgressReporter], timeout: float = 30.0) -> None:
    """Every reporter's 100% sent (or `timeout` passed): one wait for a whole batch."""
    for event in [reporter.finish() for reporter in reporters]:
        event.wait(timeout)
