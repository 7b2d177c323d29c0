"""Progress on the dashboard without stalling the optimisation.

Each progress-artifact update is an API round trip (about 10 ms on the temporary server); made inline,
ten of them per pair cost more than the whole orchestration budget. Updates go to one background
thread per process instead, which sends only the latest value per artifact; a pair's final 100% is
waited for, so the dashboard never shows a finished pair as unfinished.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import re
import threading

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from stylecore.engine import IterationRecord

PROGRESS_STEPS = 10  # an update (artifact and log line) every 10% of a pair's iterations
_log = logging.getLogger(__name__)


class _Sender:
    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="stylize-progress", daemon=True)
        self._thread.start()

    def send(self, context: contextvars.Context, artifact_id, progress: float, done: threading.Event | None = None):
        self._queue.put((context, artifact_id, progress, done))

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:  # drain what queued up meanwhile: only the newest value per artifact is sent
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            latest: dict = {}
            waiting: list[threading.Event] = []
            for context, artifact_id, progress, done in batch:
                latest[artifact_id] = (context, progress)
                if done is not None:
                    waiting.append(done)
            for artifact_id, (context, progress) in latest.items():
                try:
                    context.run(update_progress_artifact, artifact_id, progress)
                except Exception:  # progress is a convenience: a failed update must never fail a pair
                    _log.debug("progress update for %s failed", artifact_id, exc_info=True)
            for done in waiting:
                done.set()


_sender: _Sender | None = None
_sender_lock = threading.Lock()


def _get_sender() -> _Sender:
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = _Sender()
        return _sender


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text, e.g. ("progress", pair id)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())[:110].strip("-")


class ProgressReporter:
    """The engine's per-iteration callback: a progress artifact and a log line every 10% of the iterations."""

    def __init__(self, pair_id: str, iterations: int, logger):
        self.pair_id, self.logger, self.total = pair_id, logger, iterations
        self.every = max(1, iterations // PROGRESS_STEPS)
        self.artifact = create_progress_artifact(0.0, key=artifact_key("progress", pair_id), description=f"Stylising {pair_id}")
        self.context = contextvars.copy_context()  # the task run's settings and client, for the sender thread

    def __call__(self, record: IterationRecord) -> None:
        if record.iteration % self.every and record.iteration != self.total:
            return
        _get_sender().send(self.context, self.artifact, 100.0 * record.iteration / self.total)
        self.logger.info(
            "%s: %d/%d iterations, content %.4g, style %.4g, tv %.4g, total %.4g (%.1f s)",
            self.pair_id, record.iteration, self.total, record.content, record.style, record.tv, record.total, record.seconds,
        )

    def done(self, timeout: float = 30.0) -> None:
        finished = threading.Event()
        _get_sender().send(self.context, self.artifact, 100.0, finished)
        finished.wait(timeout)
