"""Devices: what a host offers, the lease each batch takes, and the flow on two fake GPUs."""

from __future__ import annotations

import json
import threading
import time

import pytest

from flows import devices
from flows.dispatch import Dispatch


def test_detect_on_a_cpu_host(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.detect() == ["cpu"]
    assert devices.detect("cpu") == ["cpu"]


def test_detect_lists_every_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert devices.detect() == ["cuda:0", "cuda:1", "cuda:2"]


def test_a_lease_is_named_after_the_host_and_the_device():
    assert devices.limit_name("cuda:0", host="gpu-7.example") == "stylize-device-gpu-7.example-cuda-0"
    assert devices.limit_name("cuda:1", host="a") != devices.limit_name("cuda:0", host="a")


def test_the_next_batch_goes_to_the_least_busy_device():
    target = Dispatch("local", None, ["cuda:0", "cuda:1"], "cuda:0")
    assert target.window == 4
    assert target.least_busy([]) == "cuda:0"
    assert target.least_busy(["cuda:0"]) == "cuda:1"
    assert target.least_busy(["cuda:0", "cuda:1", "cuda:1"]) == "cuda:0"


@pytest.mark.parametrize("handover, asks", [(30.0, 1), (0.0, 6)])
def test_a_process_queues_its_batches_for_a_device_in_front_of_the_server(monkeypatch, handover, asks):
    """Only the batch at the front of this process's queue deals with the server; while others wait, the lease
    passes to them without asking again, unless the hand-over time is up (0: every batch asks)."""
    import contextlib

    holding, most, asked = [], [0], []

    @contextlib.contextmanager
    def server_lease(name, **kwargs):
        asked.append(name)
        holding.append(name)
        most[0] = max(most[0], len(holding))
        yield
        holding.remove(name)

    monkeypatch.setattr(devices, "concurrency", server_lease)
    monkeypatch.setattr(devices, "HANDOVER_SECONDS", handover)
    order, inside = [], []

    def batch(i):
        with devices.lease(f"cuda:{handover}"):
            inside.append(len(holding))  # the server's lease is held whenever a batch runs
            time.sleep(0.05)
            order.append(i)

    threads = [threading.Thread(target=batch, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(order) == list(range(6)) and most[0] == 1
    assert inside == [1] * 6 and len(asked) == asks
    assert holding == []  # the last batch gave the lease back


def test_a_lease_the_server_refuses_fails_the_batch_and_the_next_one_asks_again(monkeypatch):
    import contextlib

    answers = [RuntimeError("Concurrency limits ['x'] must be created before acquiring slots"), None]

    @contextlib.contextmanager
    def server_lease(name, **kwargs):
        answer = answers.pop(0)
        if answer:
            raise answer
        yield

    monkeypatch.setattr(devices, "concurrency", server_lease)
    with pytest.raises(RuntimeError, match="must be created"):
        with devices.lease("cuda:5"):
            pass
    with devices.lease("cuda:5") as device:
        assert device == "cuda:5" and answers == []


@pytest.mark.slow
def test_the_flow_runs_one_batch_per_fake_gpu(tmp_path, prefect_api, squeezenet_weights, monkeypatch):
    """Two fake GPUs, eight pairs in batches of two: two batches run at once, each on its own device, never two
    on one device, and meta.json says which device made each pair."""
    from flows import commands, pipeline, tasks

    from .test_pipeline import small_png

    names = "abcdefgh"
    for name in names:
        (tmp_path / f"{name}.png").write_bytes(small_png("tubingen.jpg"))
    (tmp_path / "style.png").write_bytes(small_png("starry_night.jpg"))
    (tmp_path / "job.yaml").write_text(
        f"output: out\nbatch_size: 2\ndefaults: {{model: squeezenet1_1, weights: {squeezenet_weights}, size: 32, iterations: 3}}\n"
        "pairs:\n  - {content: '?.png', style: style.png}\n"
    )
    spans: list[tuple[str, int, float, float]] = []
    working = {"cuda:0": threading.Event(), "cuda:1": threading.Event()}
    real_stylize_batch = tasks.stylize_batch

    def on_fake_gpu(jobs, options, on_iteration=None, **kwargs):
        began = time.monotonic()
        working[options.device].set()
        (other,) = (event for device, event in working.items() if device != options.device)
        other.wait(timeout=60)  # a flow that ran one device at a time would keep the other waiting here
        results = real_stylize_batch(jobs, options.merged({"device": "cpu"}), on_iteration, **kwargs)
        spans.append((options.device, len(jobs), began, time.monotonic()))
        for result in results:
            result.plan = type(result.plan)(**{**result.plan.__dict__, "device": options.device})
        return results

    monkeypatch.setattr(tasks, "stylize_batch", on_fake_gpu)
    assert commands._run_flow(pipeline.stylize_manifest, "local", "cuda:0,cuda:1", manifest=str(tmp_path / "job.yaml")) == 0
    assert sorted((d, n) for d, n, _, _ in spans) == [("cuda:0", 2), ("cuda:0", 2), ("cuda:1", 2), ("cuda:1", 2)]
    for device in ("cuda:0", "cuda:1"):
        mine = sorted((b, e) for d, _, b, e in spans if d == device)
        assert mine[0][1] <= mine[1][0], f"two batches overlapped on {device}"
    overlapping = any(b1 < e2 and b2 < e1 for (d1, _, b1, e1) in spans for (d2, _, b2, e2) in spans if d1 != d2)
    assert overlapping, "the two devices never worked at the same time"
    metas = [json.loads((tmp_path / "out" / f"{n}-style" / "meta.json").read_text()) for n in names]
    assert sorted(m["worker"]["device"] for m in metas) == ["cuda:0"] * 4 + ["cuda:1"] * 4
    assert all(m["batch"] == {"size": 2, "limit": 2} for m in metas)
    (run_dir,) = (tmp_path / "out" / "_runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["device_seconds"]) == {"cuda:0", "cuda:1"}
