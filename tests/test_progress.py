"""Progress artifacts: the sender sends the newest value per pair, and never a value the dashboard already has."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from flows import progress
from stylecore.tracking import IterationRecord


class FakeArtifacts:
    """Stands in for Prefect's artifact calls; `gate` holds the sender inside its first call."""

    def __init__(self):
        self.calls: list[tuple[str, str, float]] = []
        self.entered = threading.Event()  # the sender is inside a call
        self.gate = threading.Event()
        self.gate.set()

    def create(self, value, key, description):
        self.entered.set()
        self.gate.wait(10)
        self.calls.append(("create", key, value))
        return f"id-{key}"

    def update(self, artifact_id, value):
        self.entered.set()
        self.gate.wait(10)
        self.calls.append(("update", artifact_id, value))


@pytest.fixture
def artifacts(monkeypatch) -> FakeArtifacts:
    fake = FakeArtifacts()
    monkeypatch.setattr(progress, "create_progress_artifact", fake.create)
    monkeypatch.setattr(progress, "update_progress_artifact", fake.update)
    monkeypatch.setattr(progress, "_sender", progress._Sender())  # a sender of this test's own
    return fake


def record(iteration: int) -> IterationRecord:
    return IterationRecord(iteration, 1.0, 1.0, 1.0, 3.0, 0.01 * iteration)


LOG = logging.getLogger("test-progress")


def test_a_pair_that_finishes_before_the_sender_gets_to_it_costs_one_call(artifacts):
    artifacts.gate.clear()
    other = progress.ProgressReporter("other", 10, LOG)
    other(record(1))
    assert artifacts.entered.wait(10)  # the sender is busy with `other`'s artifact meanwhile
    reporter = progress.ProgressReporter("a", 3, LOG)
    for i in (1, 2, 3):
        reporter(record(i))
    artifacts.gate.set()
    progress.finish_all([other, reporter], timeout=10)
    assert [c for c in artifacts.calls if c[1] == "progress-a"] == [("create", "progress-a", 100.0)]


def test_the_artifact_comes_with_the_first_iteration_and_each_new_value_is_sent_once(artifacts):
    reporter = progress.ProgressReporter("b", 20, LOG)
    time.sleep(0.2)
    assert artifacts.calls == []  # nothing on the dashboard before the pair optimises
    reporter(record(1))
    assert artifacts.entered.wait(10)  # created at 5%
    reporter(record(3))  # between two 10% steps: not sent
    reporter.finish().wait(10)  # 100%
    reporter.finish().wait(10)  # the dashboard has 100% already
    reporter(record(20))  # the last iteration reports 100% again
    reporter.finish().wait(10)
    assert artifacts.calls == [("create", "progress-b", 5.0), ("update", "id-progress-b", 100.0)]
