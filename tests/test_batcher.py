"""The per-process batcher that lets concurrent pair tasks share one device batch."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from flows import batching, devices
from stylecore import Job, StyleOptions


@pytest.fixture
def recorded(monkeypatch):
    """stylize_batch replaced by a recorder: which jobs ran together, on which device."""
    calls = []

    def fake(jobs, options, on_iteration, max_batch=None, **kwargs):
        calls.append({"jobs": [int(j.content.item()) for j in jobs], "device": options.device, "max_batch": max_batch})
        return [f"result-{int(j.content.item())}" for j in jobs]

    monkeypatch.setattr(batching, "stylize_batch", fake)
    devices.configure(["cpu"])
    return calls


def job(n: int) -> Job:
    return Job(torch.tensor(float(n)), [(torch.zeros(1), 1.0)])


def run_members(batcher, keys_and_numbers, limit=8, stagger=0.0):
    results, threads = {}, []
    for key, number in keys_and_numbers:
        def member(key=key, number=number):
            results[number] = batcher.run(key, job(number), StyleOptions(), limit)
        threads.append(threading.Thread(target=member))
        threads[-1].start()
        time.sleep(stagger)
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_planned_members_of_a_group_run_as_one_batch(recorded):
    batcher = batching.Batcher(linger=5.0)  # long linger: the batch must close because everyone arrived
    batcher.expect(["a"] * 3)
    began = time.monotonic()
    results = run_members(batcher, [("a", 1), ("a", 2), ("a", 3)], stagger=0.05)
    assert time.monotonic() - began < 4
    assert results == {1: "result-1", 2: "result-2", 3: "result-3"}
    assert [sorted(c["jobs"]) for c in recorded] == [[1, 2, 3]] and recorded[0]["device"] == "cpu"


def test_a_group_splits_at_its_limit(recorded):
    batcher = batching.Batcher(linger=5.0)
    batcher.expect(["a"] * 5)
    run_members(batcher, [("a", n) for n in range(5)], limit=2, stagger=0.05)
    assert sorted(len(c["jobs"]) for c in recorded) == [1, 2, 2]
    assert all(c["max_batch"] == 2 for c in recorded)


def test_a_full_batch_takes_no_one_else_while_its_leader_wakes(recorded, monkeypatch):
    """A leader that is slow to wake after its batch filled: a member arriving meanwhile starts the next batch."""
    batcher = batching.Batcher(linger=5.0)
    batcher.expect(["a"] * 3)
    awake = threading.Event()
    real_ready = batcher._ready
    monkeypatch.setattr(batcher, "_ready", lambda key, group: awake.is_set() and real_ready(key, group))
    threads = [threading.Thread(target=batcher.run, args=("a", job(n), StyleOptions(), 2)) for n in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)  # in order: the leader, the one that fills its batch, one more
    awake.set()
    with batcher._cond:
        batcher._cond.notify_all()
    for thread in threads:
        thread.join(timeout=30)
    assert [sorted(c["jobs"]) for c in recorded] in ([[0, 1], [2]], [[2], [0, 1]])


def test_a_withdrawn_member_is_not_waited_for(recorded):
    batcher = batching.Batcher(linger=5.0)
    batcher.expect(["a"] * 3)
    batcher.withdraw("a")  # e.g. skipped: its outputs are up to date
    began = time.monotonic()
    run_members(batcher, [("a", 1), ("a", 2)])
    assert time.monotonic() - began < 4 and [sorted(c["jobs"]) for c in recorded] == [[1, 2]]


def test_a_member_that_never_comes_is_waited_for_only_the_linger(recorded):
    batcher = batching.Batcher(linger=0.3)
    batcher.expect(["a"] * 3)  # the third one crashes before it arrives and withdraws nothing
    began = time.monotonic()
    run_members(batcher, [("a", 1), ("a", 2)])
    assert 0.25 < time.monotonic() - began < 4
    assert [sorted(c["jobs"]) for c in recorded] == [[1, 2]]


def test_unplanned_pairs_and_other_groups_run_apart(recorded):
    batcher = batching.Batcher(linger=5.0)
    batcher.expect(["a", "a"])
    run_members(batcher, [("a", 1), (None, 2), ("b", 3), ("a", 4)], stagger=0.05)
    assert sorted(sorted(c["jobs"]) for c in recorded) == [[1, 4], [2], [3]]


def test_a_failed_batch_is_every_members_error(monkeypatch):
    def broken(jobs, *args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(batching, "stylize_batch", broken)
    devices.configure(["cpu"])
    batcher = batching.Batcher(linger=5.0)
    batcher.expect(["a", "a"])
    errors = []

    def member(n):
        try:
            batcher.run("a", job(n), StyleOptions(), 8)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=member, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == ["device lost", "device lost"]


def test_group_keys_tell_sizes_and_options_apart():
    base = StyleOptions(size=64)
    assert batching.group_key(48, 64, base) == batching.group_key(48, 64, StyleOptions(size=64))
    assert batching.group_key(48, 64, base) != batching.group_key(64, 48, base)
    assert batching.group_key(48, 64, base) != batching.group_key(48, 64, base.merged({"tv_weight": 1.0}))


def test_auto_batch_size_follows_the_memory_estimate(monkeypatch):
    from stylecore import memory

    options = StyleOptions(model="squeezenet1_1", size=512, device="cpu", precision="fp32")
    per_image = batching.memory_estimate(options, 384, 512, torch.device("cpu"))
    monkeypatch.setattr(memory, "device_budget", lambda device: per_image.total(3) + 1)
    assert batching.auto_batch_size(options, 384, 512, "cpu") == 3
    monkeypatch.setattr(memory, "device_budget", lambda device: 1 << 50)
    assert batching.auto_batch_size(options, 384, 512, "cpu") == batching.MAX_AUTO_BATCH
    monkeypatch.setattr(memory, "device_budget", lambda device: 1)
    assert batching.auto_batch_size(options, 384, 512, "cpu") == 1


def test_on_a_cpu_auto_batches_only_where_it_was_measured_to_pay(monkeypatch):
    from stylecore import memory

    monkeypatch.setattr(memory, "device_budget", lambda device: 1 << 50)
    assert batching.auto_batch_size(StyleOptions(model="vgg16"), 384, 512, "cpu") == 1  # parity on a CPU: no gain
    assert batching.auto_batch_size(StyleOptions(model="squeezenet1_1"), 384, 512, "cpu") == batching.MAX_AUTO_BATCH


def test_the_flow_plans_groups_from_headers(tmp_path):
    """Same output size and options → one group; a rotated photo is planned upright; unreadable → alone."""
    from flows.manifest import PairSpec
    from flows.pipeline import plan_groups
    from stylecore import images

    from . import images as fixtures

    files = {
        "wide.png": fixtures.rgb_png(40, 30), "wide-too.jpg": fixtures.jpeg(80, 60), "tall.png": fixtures.rgb_png(30, 40),
        "rotated.jpg": fixtures.exif_rotated_jpeg(), "broken.png": b"\x89PNG not really",
        "noisy.png": noise_png(400, 300),  # larger than the bytes the plan reads
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    options = StyleOptions(size=64)
    pairs = [PairSpec(name, str(tmp_path / name), str(tmp_path / "wide.png"), options, "") for name in files]
    groups = plan_groups(pairs, "auto", "local")
    assert len(files["noisy.png"]) > 1 << 16
    assert groups["wide.png"] == groups["wide-too.jpg"] == groups["noisy.png"] == batching.group_key(48, 64, options)
    assert groups["tall.png"] == batching.group_key(64, 48, options)
    rotated = images.load(files["rotated.jpg"], 64)  # what the pair task will decode: the key must agree
    assert groups["rotated.jpg"] == batching.group_key(*rotated.shape[-2:], options)
    assert groups["broken.png"] is None
    assert set(plan_groups(pairs, 1, "local").values()) == {None}  # batch_size 1: nothing to plan
    assert set(plan_groups(pairs, "auto", "ray").values()) == {None}


def noise_png(width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    from . import images as fixtures

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return fixtures.encode(Image.fromarray(pixels, "RGB"))
