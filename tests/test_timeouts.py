"""Timeouts: a batch that stops making progress is timed out and retried; the run finishes, the others unharmed."""

from __future__ import annotations

import json
import threading
import time

import pytest

from flows.timeouts import BatchTimedOut, Watchdog

from .test_faults import PAIRS, loss_columns, make_job
from .test_pipeline import _flow_run_filter, run_cli


def batch_states(flow_run_id: str) -> list[str]:
    """The final state name of each optimise-batch task run of a flow run, as the dashboard shows them."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=_flow_run_filter(flow_run_id))
    return [t.state.name for t in task_runs if t.name.startswith("batch ")]


def iterate(watchdog: Watchdog, iterations: int, seconds: float, index: int = 0) -> int:
    for i in range(1, iterations + 1):
        time.sleep(seconds)
        watchdog.tick(index)
    return iterations


def test_a_batch_that_keeps_iterating_is_never_timed_out_however_long_it_runs():
    watchdog = Watchdog(planned_iterations=30, stall_seconds=0.3)
    assert watchdog.run(lambda: iterate(watchdog, 30, 0.05)) == 30  # 1.5 s in all, five times the limit


def test_a_hung_batch_is_timed_out_and_its_thread_given_up():
    release = threading.Event()
    watchdog = Watchdog(planned_iterations=100, stall_seconds=0.5)

    def hang_after_three():
        iterate(watchdog, 3, 0.01)
        release.wait()  # blocks in C: nothing from outside the thread can interrupt it
        watchdog.tick(0)
        return "went on"

    began = time.monotonic()
    with pytest.raises(BatchTimedOut, match=r"the batch: no progress for \d+ s after 3 of 100 iterations \(limit 0 s\)"):
        watchdog.run(hang_after_three)
    assert time.monotonic() - began < 0.5 + 1.0 + 2.0 + 1.0  # the limit, a check's interval, the grace, slack
    (parked,) = [t for t in threading.enumerate() if t.name == "stylize-optimise"]
    assert parked.daemon  # it cannot keep the process from exiting
    release.set()  # should it ever go on, its next iteration ends it
    parked.join(5)
    assert not parked.is_alive()


def test_a_slow_iteration_that_ends_within_the_grace_ends_the_batch_itself():
    watchdog = Watchdog(planned_iterations=10, stall_seconds=0.3)

    def one_slow_iteration():
        iterate(watchdog, 2, 0.01)
        time.sleep(1.0)  # over the limit, within the grace: its next tick learns it was timed out
        iterate(watchdog, 1, 0)

    with pytest.raises(BatchTimedOut):
        watchdog.run(one_slow_iteration)


def test_the_limit_grows_with_the_planned_iterations_at_the_measured_speed():
    """A third of the expected duration: 300 iterations at 0.02 s take 6 s, so a 1 s pause (over the 0.3 s
    floor) is not a stall; with 10 planned iterations it is."""
    for planned, stalls in ((300, False), (10, True)):
        watchdog = Watchdog(planned_iterations=planned, stall_seconds=0.3)

        def pause_midway():
            iterate(watchdog, 10, 0.02)
            time.sleep(1.0)
            return iterate(watchdog, 2, 0.02)

        if stalls:
            with pytest.raises(BatchTimedOut):
                watchdog.run(pause_midway)
        else:
            assert watchdog.run(pause_midway) == 2
            assert 6 < watchdog.limit() < 20  # 300 × (≈1.25 s / 12 iterations) / 3


def test_the_work_runs_in_the_callers_context_and_its_errors_reach_the_caller():
    import contextvars

    where = contextvars.ContextVar("where", default="elsewhere")
    where.set("the task's context")
    watchdog = Watchdog(planned_iterations=10, stall_seconds=5)
    assert watchdog.run(where.get) == "the task's context"
    with pytest.raises(ZeroDivisionError):
        watchdog.run(lambda: 1 / 0)


@pytest.mark.slow
def test_a_hung_pair_is_timed_out_and_retried_while_the_others_finish(tmp_path, prefect_api, squeezenet_weights, monkeypatch):
    """On a real Prefect server: one pair hangs once at iteration 13 and goes on from its checkpoint on the retry;
    another hangs on every attempt and ends TimedOut; the other two are made once each, untouched."""
    settings = "batch_size: 1\nretries: 1\nretry_delay_seconds: 0\nstall_seconds: 8\n"  # 40× a first iteration here
    job = make_job(tmp_path, squeezenet_weights, settings=settings, defaults=", checkpoint_every: 5")
    hangs_once, hangs_always = PAIRS[1], PAIRS[3]
    faults = [
        {"op": "hang", "match": hangs_once, "after": 12, "times": 1},
        {"op": "hang", "match": hangs_always, "after": 3, "times": -1},
    ]
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "INFO")  # each pair's "optimised on" line
    code, out, err = run_cli("run", str(job), faults=faults)
    assert code == 1, err[-3000:]  # finished, with one pair failed

    (report_path,) = (tmp_path / "out" / "_runs").glob("*/report.json")
    report = json.loads(report_path.read_text())
    pairs = {pair["id"]: pair for pair in report["pairs"]}
    assert sorted(batch_states(report["flow_run_id"])) == ["Completed", "Completed", "Completed", "TimedOut"]
    assert pairs[hangs_always]["status"] == "failed"
    assert "no progress for" in pairs[hangs_always]["error"] and "after 2 attempts" in pairs[hangs_always]["error"]
    assert f"BatchTimedOut: {hangs_always}: no progress for" in err and "(attempt 1 of 2, will retry)" in err
    for pair in (p for p in PAIRS if p != hangs_always):
        assert pairs[pair]["status"] == "completed", pairs[pair]
        assert err.count(f"{pair}: optimised on") == 1
    meta = json.loads((tmp_path / "out" / hangs_once / "meta.json").read_text())
    assert 5 <= meta["resumed_from"] <= 12, meta["resumed_from"]
    assert [row[0] for row in loss_columns(tmp_path / "out" / hangs_once / "losses.csv")][1:] == [str(i) for i in range(1, 41)]
    for pair in (PAIRS[0], PAIRS[2]):
        assert json.loads((tmp_path / "out" / pair / "meta.json").read_text())["resumed_from"] is None
