"""Batches planned from image headers, before any pixel is decoded; batch sizes from the memory estimate."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flows.batches import batch_limit, group_key, plan_batches
from flows.manifest import PairSpec
from stylecore import images, memory
from stylecore.options import StyleOptions
from stylecore.planning import MAX_AUTO_BATCH, auto_batch_size, memory_estimate

from . import images as fixtures


def test_group_keys_tell_sizes_and_options_apart():
    base = StyleOptions(size=64)
    assert group_key(48, 64, base) == group_key(48, 64, StyleOptions(size=64))
    assert group_key(48, 64, base) != group_key(64, 48, base)
    assert group_key(48, 64, base) != group_key(48, 64, base.merged({"tv_weight": 1.0}))


def test_auto_batch_size_follows_the_memory_estimate(monkeypatch):
    import torch

    options = StyleOptions(model="squeezenet1_1", size=512, device="cpu", precision="fp32")
    per_image = memory_estimate(options, 384, 512, torch.device("cpu"))
    monkeypatch.setattr(memory, "device_budget", lambda device: per_image.total(3) + 1)
    assert auto_batch_size(options, 384, 512, "cpu") == 3
    monkeypatch.setattr(memory, "device_budget", lambda device: 1 << 50)
    assert auto_batch_size(options, 384, 512, "cpu") == MAX_AUTO_BATCH
    monkeypatch.setattr(memory, "device_budget", lambda device: 1)
    assert auto_batch_size(options, 384, 512, "cpu") == 1
    assert auto_batch_size(options, 384, 512, "cpu", budget=per_image.total(2) + 1) == 2  # memory_limit_gb wins


def test_on_a_cpu_auto_batches_only_where_it_was_measured_to_pay(monkeypatch):
    monkeypatch.setattr(memory, "device_budget", lambda device: 1 << 50)
    assert auto_batch_size(StyleOptions(model="vgg16"), 384, 512, "cpu") == 1  # parity on a CPU: no gain
    assert auto_batch_size(StyleOptions(model="squeezenet1_1"), 384, 512, "cpu") == MAX_AUTO_BATCH


def test_a_device_the_flow_cannot_see_gets_the_largest_auto_batch():
    options = StyleOptions(model="vgg16")
    assert batch_limit("auto", options, (64, 48), None, None) == MAX_AUTO_BATCH  # a Ray GPU: the engine there fits it
    assert batch_limit(3, options, (64, 48), None, None) == 3


def noise_png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return fixtures.encode(Image.fromarray(pixels, "RGB"))


@pytest.fixture
def pictures(tmp_path):
    files = {
        "wide.png": fixtures.rgb_png(40, 30), "wide-too.jpg": fixtures.jpeg(80, 60), "tall.png": fixtures.rgb_png(30, 40),
        "rotated.jpg": fixtures.exif_rotated_jpeg(), "broken.png": b"\x89PNG not really",
        "noisy.png": noise_png(400, 300),  # larger than the bytes the plan reads
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path, files


def test_batches_are_planned_from_headers(pictures):
    """Same output size and options → one batch; a rotated photo is planned upright; unreadable → alone."""
    folder, files = pictures
    options = StyleOptions(model="squeezenet1_1", size=64, device="cpu")
    pairs = [PairSpec(name, str(folder / name), str(folder / "wide.png"), options, "") for name in files]
    assert len(files["noisy.png"]) > 1 << 16
    plans = plan_batches(pairs, "auto", "cpu")
    by_pair = {pair.id: plan for plan in plans for pair in plan.pairs}
    assert by_pair["wide.png"] is by_pair["wide-too.jpg"] is by_pair["noisy.png"]
    assert by_pair["wide.png"].size == (64, 48) and by_pair["tall.png"].size == (48, 64)
    rotated = images.load(files["rotated.jpg"], 64)  # what the read step will decode: the plan must agree
    assert by_pair["rotated.jpg"] is by_pair["tall.png"] and tuple(rotated.shape[-2:]) == (64, 48)
    assert by_pair["broken.png"].pairs == (pairs[4],) and by_pair["broken.png"].size is None
    assert [p.number for p in plans] == list(range(1, len(plans) + 1))


def test_a_group_is_cut_at_the_batch_size_and_batch_size_1_reads_no_header(pictures, monkeypatch):
    folder, files = pictures
    options = StyleOptions(model="squeezenet1_1", size=64, device="cpu")
    pairs = [PairSpec(f"p{i}", str(folder / "wide.png"), str(folder / "wide.png"), options, "") for i in range(5)]
    assert [len(p.pairs) for p in plan_batches(pairs, 2, "cpu")] == [2, 2, 1]
    assert {p.limit for p in plan_batches(pairs, 2, "cpu")} == {2}

    from flows import batches

    monkeypatch.setattr(batches.storage, "read_head", lambda uri: pytest.fail("batch_size 1 needs no header"))
    assert [len(p.pairs) for p in plan_batches(pairs, 1, "cpu")] == [1] * 5
