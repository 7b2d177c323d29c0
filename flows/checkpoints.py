"""Checkpoints: a pair killed or preempted mid-optimisation goes on from its last saved state.

Every `checkpoint_every` iterations the engine hands over each image's whole optimisation
state (`stylecore.checkpoint.State`); a thread of the process's own writes it beside the
pair's outputs as `.checkpoint.pt` (hidden, like `.claim.json`: never mistaken for an
output), so the device never waits on storage. A pair keeps one pending state at most: a
newer one replaces a state not yet written. Writes are atomic and streamed
(`storage.write_stream`): the state is never held twice in memory.

The file is a header line (JSON: the pair, its fingerprint, the iteration), the state as
`torch.save` wrote it, and a CRC-32 of those bytes. Before optimising, a pair with a
checkpoint of its own fingerprint (the same input bytes, options, weights and engine code)
resumes from it; one of another fingerprint is removed unread, and one that is damaged is
removed with a warning line: the pair then starts afresh, never fails for it. The state is
read with `torch.load(weights_only=True)` and checked through before the engine sees it.
`write_outputs` removes the checkpoint once meta.json is written.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import zlib

import torch

from stylecore.checkpoint import State
from stylecore.errors import StyleError
from stylecore.memory import LBFGS_HISTORY
from stylecore.planning import planned_iterations

from . import storage
from .manifest import PairSpec

CHECKPOINT_NAME = ".checkpoint.pt"
MAGIC = "stylize-checkpoint"
HEAD_BYTES = 4096  # the header line is read alone first, so a stale checkpoint is never read whole
_TRAILER = 9  # "%08x\n": the CRC-32 of the torch.save bytes
WRITE_SHARE = 0.02  # the most of its time a checkpoint writer spends writing

_log = logging.getLogger(__name__)


def uri(pair: PairSpec) -> str:
    return pair.uri(CHECKPOINT_NAME)


def write(pair: PairSpec, fingerprint: str, state: State, cancelled: threading.Event | None = None) -> None:
    """The checkpoint file, atomically, streamed: never a second copy of the state in memory. Once `cancelled`
    is set the write stops within a tensor and leaves the file as it was (`Cancelled`)."""
    storage.write_stream(uri(pair), lambda file: _produce(file, pair, fingerprint, state, cancelled))


def encode(pair: PairSpec, fingerprint: str, state: State) -> bytes:
    """The checkpoint file's bytes."""
    buffer = io.BytesIO()
    _produce(buffer, pair, fingerprint, state)
    return buffer.getvalue()


def _produce(file, pair: PairSpec, fingerprint: str, state: State, cancelled: threading.Event | None = None) -> None:
    header = {"magic": MAGIC, "pair": pair.id, "fingerprint": fingerprint, "iteration": state.iteration, "scale": state.scale}
    file.write(json.dumps(header).encode() + b"\n")
    summed = _Checksummed(file, cancelled)
    torch.save(state.to_record(), summed)
    file.write(b"%08x\n" % summed.crc)


class Cancelled(Exception):
    """A write given up: the batch it was for has finished."""


class _Checksummed:
    """A file that keeps the CRC-32 of what goes through it, and stops when told to."""

    def __init__(self, file, cancelled: threading.Event | None = None):
        self.file, self.crc, self.cancelled = file, 0, cancelled

    def write(self, data) -> int:
        if self.cancelled is not None and self.cancelled.is_set():
            raise Cancelled
        self.crc = zlib.crc32(data, self.crc)
        return self.file.write(data)

    def flush(self) -> None:
        pass  # the file is flushed (and fsynced) once, when it is whole


class Damaged(ValueError):
    """A checkpoint that cannot be used: unreadable, cut short, altered or not a state."""


def header(head: bytes) -> dict:
    line, newline, _ = head.partition(b"\n")
    try:
        found = json.loads(line) if newline else None
    except ValueError:
        found = None
    if not isinstance(found, dict) or found.get("magic") != MAGIC or not isinstance(found.get("fingerprint"), str):
        raise Damaged("not a stylize checkpoint")
    return found


def decode(data: bytes) -> State:
    header(data[:HEAD_BYTES])
    start = data.index(b"\n") + 1
    try:
        expected = int(data[-_TRAILER:-1], 16) if len(data) >= start + _TRAILER else None
    except ValueError:
        expected = None
    payload = memoryview(data)[start:-_TRAILER]
    if expected is None or zlib.crc32(payload) != expected:
        raise Damaged("cut short or altered (its checksum does not match)")
    try:
        record = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise Damaged(f"unreadable ({type(exc).__name__})") from None
    try:
        return State.from_record(record)
    except Exception as exc:  # ValueError names what is wrong; anything else is a record of the wrong shape
        raise Damaged(str(exc) if isinstance(exc, ValueError) else f"not a state ({type(exc).__name__})") from None


def size_limit(pair: PairSpec, height: int, width: int) -> int:
    """The most bytes a checkpoint of this pair can take: L-BFGS's history (two images per remembered step) and
    a few more images, a record per iteration, and its snapshots; anything larger is not read."""
    options = pair.options
    numel = 3 * height * width
    iterations = planned_iterations(options, height, width)
    snapshots = iterations // options.snapshot_every + 1 if options.snapshot_every else 0
    return (64 << 20) + 4 * numel * (2 * LBFGS_HISTORY + 16) + numel * snapshots + 64 * iterations


def load(pair: PairSpec, fingerprint: str, size: tuple[int, int], logger=_log) -> State | None:
    """The pair's state to resume from, or None: none there, another fingerprint's (removed), or damaged
    (removed, with a warning). Storage failures other than absence are raised, to be retried as transient."""
    if not pair.options.checkpoint_every:
        return None
    location = uri(pair)
    try:
        head = storage.read_head(location, HEAD_BYTES)
    except storage.InputMissing:
        return None
    except StyleError as exc:  # a folder or FIFO by that name, or no permission: nothing to resume from
        logger.warning("%s: ignored its checkpoint: %s; starting afresh", pair.id, exc)
        return None
    try:
        found = header(head)
        if found["fingerprint"] != fingerprint:
            logger.info("%s: removed a checkpoint made from other inputs, options, weights or code", pair.id)
            _discard(location)
            return None
        state = decode(storage.read_bytes(location, limit=size_limit(pair, *size)))
    except storage.InputMissing:  # removed meanwhile
        return None
    except (Damaged, StyleError) as exc:
        logger.warning("%s: ignored its checkpoint, damaged: %s; starting afresh", pair.id, exc)
        _discard(location)
        return None
    logger.info("%s: resuming from its checkpoint at iteration %d", pair.id, state.iteration)
    return state


def remove(pair: PairSpec) -> None:
    storage.remove(uri(pair))


def _discard(location: str) -> None:
    try:
        storage.remove(location)
    except Exception as exc:  # left for the next run to find unusable again: never a reason to fail the pair
        _log.debug("could not remove %s: %s", location, exc)


class Writer:
    """Writes the newest state of each pair on a thread of its own; `close` ends it. After a write that took w
    seconds it waits w·(1 − s)/s before the next (s = WRITE_SHARE), so however fast the device or slow the
    storage, writing checkpoints takes at most that share of the time; states that come meanwhile wait, each
    pair's newest only."""

    def __init__(self, logger=_log):
        self.logger = logger
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[PairSpec, str, State]] = {}  # by pair id: the newest state not yet written
        self._closed = False
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None
        self.written: dict[str, int] = {}  # pair id → iteration of its last checkpoint written

    def submit(self, pair: PairSpec, fingerprint: str, state: State) -> None:
        with self._cond:
            if self._closed:
                return
            self._pending[pair.id] = (pair, fingerprint, state)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="stylize-checkpoints", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, flush: bool) -> None:
        """Stop. With `flush`, once every pending state is written, at once: a batch that was stopped or failed
        keeps its newest. Without, at once: a batch that finished has no use for its states, so pending ones are
        dropped and the write under way is given up (its file stays as it was), keeping the device free."""
        with self._cond:
            if not flush:
                self._pending.clear()
                self._cancelled.set()
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        quiet_until = 0.0  # no write before then, so writing takes at most WRITE_SHARE of the time
        while True:
            with self._cond:
                while not self._closed:
                    wait = quiet_until - time.monotonic() if self._pending else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if not self._pending:
                    return
                pair_id = next(iter(self._pending))  # the pair that has waited longest
                pair, fingerprint, state = self._pending.pop(pair_id)
            began = time.monotonic()
            try:
                write(pair, fingerprint, state, self._cancelled)
                self.written[pair_id] = state.iteration
            except Cancelled:
                return
            except Exception as exc:  # insurance only: never fails a pair
                self.logger.warning("%s: checkpoint at iteration %d not written: %s: %s", pair.id, state.iteration, type(exc).__name__, exc)
            ended = time.monotonic()
            quiet_until = ended + (ended - began) * (1 - WRITE_SHARE) / WRITE_SHARE
