"""Checkpoints: a state handed out mid-optimisation, saved and read back, resumes to exactly the run never stopped;
the checkpoint file refuses what is damaged or not its pair's. (The flow killed and resumed: tests/test_faults.py.)"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import replace

import pytest
import torch

from flows import checkpoints, storage
from flows.manifest import PairSpec
from stylecore import StyleOptions, images, lockstep
from stylecore.checkpoint import State
from stylecore.engine import Job, stylize_batch

from .images import sample_png


def job(size: int) -> Job:
    return Job(images.load(sample_png("tubingen.jpg"), size), [(images.load(sample_png("starry_night.jpg"), size), 1.0)])


def options(weights, **overrides) -> StyleOptions:
    base = dict(model="squeezenet1_1", weights=str(weights), size=64, iterations=24, device="cpu", checkpoint_every=5)
    return StyleOptions(**{**base, **overrides})


def optimise(opts: StyleOptions, resume: State | None = None, checkpoints_to: list | None = None):
    (result,) = stylize_batch(
        [job(opts.size)], opts, resume=[resume],
        on_checkpoint=None if checkpoints_to is None else (lambda index, state: checkpoints_to.append(state)),
    )
    assert not isinstance(result, Exception), result
    return result


def through_bytes(state: State) -> State:
    """What a later run reads: the state saved with torch.save and loaded with weights_only."""
    buffer = io.BytesIO()
    torch.save(state.to_record(), buffer)
    return State.from_record(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True, map_location="cpu"))


def losses(result) -> list[tuple]:
    return [(r.iteration, r.content, r.style, r.tv, r.total, r.scale) for r in result.history]  # all but the clock


CASES = {
    "lbfgs": {},
    "lbfgs, 2 scales, snapshots, early stop": dict(
        size=176, scales=2, coarse_iterations=12, iterations=16, snapshot_every=4, early_stop=0.1, early_stop_window=4,
        checkpoint_every=4,
    ),
    "adam": dict(optimizer="adam", lr=0.02),
    "tiled": dict(size=96, tile=64, iterations=8, checkpoint_every=3),
}


@pytest.mark.parametrize("case", CASES)
def test_a_resumed_run_equals_the_run_never_stopped(case, squeezenet_weights):
    opts = options(squeezenet_weights, **CASES[case])
    states: list[State] = []
    whole = optimise(opts, checkpoints_to=states)
    assert whole.resumed_from is None
    due = [s.iteration for s in states]
    assert due == sorted(due) and len(due) >= 2 and all(b - a >= opts.checkpoint_every - 1 for a, b in zip(due, due[1:]))
    # Read back only now, after the run went on: the states handed out were never changed afterwards.
    chosen = [states[0], states[-1]]  # with 2 scales, one in each; the last one inside the early stop's window
    if case.startswith("lbfgs, 2"):
        assert (states[0].scale, states[-1].scale) == (0, 1), due
    for state in map(through_bytes, chosen):
        resumed = optimise(opts, resume=state)
        assert resumed.resumed_from == state.iteration
        assert torch.equal(resumed.image, whole.image), (case, state.iteration)
        assert losses(resumed) == losses(whole) and resumed.best_iteration == whole.best_iteration
        assert resumed.early_stops == whole.early_stops
        assert [(s.iteration, s.scale) for s in resumed.snapshots] == [(s.iteration, s.scale) for s in whole.snapshots]
        assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(resumed.snapshots, whole.snapshots))
        assert [r.scale for r in resumed.history] == [r.scale for r in whole.history]
        # the clock goes on from the checkpoint's
        assert all(b.seconds >= a.seconds for a, b in zip(resumed.history, resumed.history[1:]))
    if case.startswith("lbfgs, 2"):
        assert whole.snapshots and whole.early_stops and chosen[-1].progress.convergence[1] > 0  # the case covers them


def test_the_resumable_lbfgs_is_torchs_to_the_bit(squeezenet_weights, monkeypatch):
    opts = options(squeezenet_weights, checkpoint_every=0)
    ours = optimise(opts)
    monkeypatch.setattr(lockstep, "LBFGS", torch.optim.LBFGS)
    theirs = optimise(opts)
    assert torch.equal(ours.image, theirs.image) and losses(ours) == losses(theirs)


def test_a_state_whose_optimiser_no_longer_applies_starts_its_scale_again(squeezenet_weights):
    """An L-BFGS state where the scale is now tiled (another device's memory, say): that scale starts again
    from where it began, which is what a tiled run never stopped does."""
    states: list[State] = []
    optimise(options(squeezenet_weights, size=96, iterations=8, checkpoint_every=3), checkpoints_to=states)
    tiled = options(squeezenet_weights, size=96, tile=64, iterations=4)
    resumed = optimise(tiled, resume=through_bytes(states[0]))
    assert resumed.resumed_from is None  # one scale: nothing of the state was usable
    assert torch.equal(resumed.image, optimise(tiled).image)


def test_a_state_for_another_size_is_not_used(squeezenet_weights):
    states: list[State] = []
    optimise(options(squeezenet_weights, size=48, iterations=8), checkpoints_to=states)
    result = optimise(options(squeezenet_weights, iterations=8), resume=states[0])
    assert result.resumed_from is None and len(result.history) == 8


@pytest.fixture(scope="module")
def a_state(squeezenet_weights) -> State:
    states: list[State] = []
    optimise(options(squeezenet_weights, size=48, iterations=12), checkpoints_to=states)
    return states[-1]


@pytest.mark.parametrize(
    "spoil, complaint",
    [
        (lambda r: r.update(format=99), "format"),
        (lambda r: r.update(pixels=r["pixels"][..., :-1]), "pixels: shape"),
        (lambda r: r["pixels"].view(-1).__setitem__(0, float("nan")), "pixels: a value that is not finite"),
        (lambda r: r["optimiser"]["old_dirs"].pop(), "history lists"),
        (lambda r: r["optimiser"].pop("d"), "optimiser.d"),
        (lambda r: r.update(mode="sgd"), "mode"),
        (lambda r: r.update(scale_history=10_000), "scale_history"),
    ],
)
def test_a_record_that_is_not_a_whole_state_is_refused(spoil, complaint, a_state):
    record = through_bytes(a_state).to_record()
    spoil(record)
    with pytest.raises(ValueError, match=complaint):
        State.from_record(record)


def test_checkpoint_every_is_left_out_of_the_fingerprint():
    assert StyleOptions(checkpoint_every=3).digest() == StyleOptions().digest() == StyleOptions(checkpoint_every=0).digest()


# --- the checkpoint file --------------------------------------------------------------------------------------


def pair_in(folder, every: int = 5) -> PairSpec:
    return PairSpec("p", "c.png", "s.png", StyleOptions(size=48, checkpoint_every=every), str(folder / "p"))


def test_a_checkpoint_file_reads_back_and_refuses_damage(tmp_path, a_state, caplog):
    pair = pair_in(tmp_path)
    storage.write_bytes(checkpoints.uri(pair), checkpoints.encode(pair, "fp", a_state))
    assert checkpoints.uri(pair).endswith("/p/.checkpoint.pt")
    loaded = checkpoints.load(pair, "fp", (36, 48))
    assert loaded.iteration == a_state.iteration and torch.equal(loaded.progress.pixels, a_state.progress.pixels)
    assert checkpoints.load(pair_in(tmp_path, every=0), "fp", (36, 48)) is None  # checkpoints off: not even read

    data = bytearray(checkpoints.encode(pair, "fp", a_state))
    for name, spoilt in (("flipped", data[:5000] + bytes([data[5000] ^ 1]) + data[5001:]), ("cut", data[:-100]), ("junk", b"\x00" * 64)):
        storage.write_bytes(checkpoints.uri(pair), bytes(spoilt))
        with caplog.at_level(logging.WARNING):
            assert checkpoints.load(pair, "fp", (36, 48)) is None, name
        assert "ignored its checkpoint" in caplog.text
        assert not storage.exists(checkpoints.uri(pair)), name  # removed: the pair starts afresh
        caplog.clear()

    storage.write_bytes(checkpoints.uri(pair), bytes(data))
    assert checkpoints.load(pair, "other inputs", (36, 48)) is None
    assert not storage.exists(checkpoints.uri(pair))
    (tmp_path / "p" / ".checkpoint.pt").mkdir()  # not a file at all: ignored, and the pair goes on
    assert checkpoints.load(pair, "fp", (36, 48)) is None


def test_the_writer_keeps_only_the_newest_pending_state_per_pair(tmp_path, a_state, monkeypatch):
    pair = pair_in(tmp_path)
    release, writing, written = threading.Event(), threading.Event(), []
    real = checkpoints.write

    def slow_write(pair, fingerprint, state, cancelled=None):
        writing.set()
        release.wait(10)
        written.append(state.iteration)
        real(pair, fingerprint, state)

    monkeypatch.setattr(checkpoints, "write", slow_write)
    states = [replace(a_state, progress=replace(a_state.progress, history=a_state.progress.history[:n])) for n in (1, 2, 3, 4)]
    writer = checkpoints.Writer()
    writer.submit(pair, "fp", states[0])
    writing.wait(10)
    for state in states[1:]:  # the first is being written: each of these replaces the one before
        writer.submit(pair, "fp", state)
    release.set()
    writer.close(flush=True)
    assert written == [states[0].iteration, states[-1].iteration]
    writer.submit(pair, "fp", states[0])  # closed: nothing more is written
    assert len(written) == 2
    assert checkpoints.load(pair, "fp", (36, 48)).iteration == states[-1].iteration


def test_the_writer_spends_at_most_its_share_of_the_time_writing(tmp_path, a_state, monkeypatch):
    monkeypatch.setattr(checkpoints, "WRITE_SHARE", 0.25)  # a write of w seconds, then 3w without one
    spans: list[tuple[float, float]] = []

    def timed_write(pair, fingerprint, state, cancelled=None):
        began = time.monotonic()
        time.sleep(0.1)
        spans.append((began, time.monotonic()))

    monkeypatch.setattr(checkpoints, "write", timed_write)
    writer = checkpoints.Writer()
    for _ in range(3):
        writer.submit(pair_in(tmp_path), "fp", a_state)
        time.sleep(0.05)
    while len(spans) < 2:
        time.sleep(0.01)
    writer.close(flush=False)
    (first_start, first_end), (second_start, _) = spans[:2]
    assert second_start - first_end >= 3 * (first_end - first_start) - 0.01
    assert len(spans) == 2  # the rest had been replaced by the newest, which was written


@pytest.mark.slow  # moto's S3 server
def test_on_s3_a_checkpoint_appears_whole_or_not_at_all(s3_bucket, a_state):
    pair = PairSpec("p", "c.png", "s.png", StyleOptions(size=48, checkpoint_every=5), f"s3://{s3_bucket}/out/p")
    checkpoints.write(pair, "fp", a_state)
    assert checkpoints.load(pair, "fp", (36, 48)).iteration == a_state.iteration

    def fails_halfway(file):
        file.write(b"x" * 1000)
        raise ConnectionError("the network went away")

    with pytest.raises(ConnectionError):
        storage.write_stream(checkpoints.uri(pair), fails_halfway)
    assert checkpoints.load(pair, "fp", (36, 48)).iteration == a_state.iteration  # the old one, whole
    checkpoints.remove(pair)
    assert checkpoints.load(pair, "fp", (36, 48)) is None


def test_a_finished_batch_gives_up_the_write_under_way(tmp_path, a_state, monkeypatch):
    """Its pairs are done: the device is not held for a state nobody will read, and the file stays as it was."""
    pair = pair_in(tmp_path)
    checkpoints.write(pair, "old", a_state)
    before = storage.read_bytes(checkpoints.uri(pair))
    started, real = threading.Event(), torch.save

    def slow_save(obj, file):
        started.set()
        time.sleep(0.5)
        real(obj, file)

    monkeypatch.setattr(torch, "save", slow_save)
    writer = checkpoints.Writer()
    writer.submit(pair, "new", a_state)
    started.wait(10)
    began = time.monotonic()
    writer.close(flush=False)
    assert time.monotonic() - began < 5
    assert storage.read_bytes(checkpoints.uri(pair)) == before and pair.id not in writer.written
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.endswith(".tmp")]
