"""What every optimisation keeps as it goes: a record per evaluation, the best image, and convergence."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .images import quantise


@dataclass(frozen=True)
class IterationRecord:
    iteration: int  # 1-based, counted across scales
    content: float
    style: float
    tv: float
    total: float
    seconds: float  # since the optimisation started
    scale: int = 0  # index of the scale, coarse to fine


@dataclass(frozen=True)
class Snapshot:
    """The best image at an iteration, in 8 bits: a quarter of float32, kept until the pair's outputs are written."""

    iteration: int  # as in IterationRecord: 1-based, counted across scales
    scale: int
    pixels: Tensor  # (1, 3, h, w) uint8 on the CPU, at that scale's size


class BestImage:
    """The lowest-loss image evaluated so far: the one returned, so the image and its reported losses agree.

    With `snapshot_every`, a copy of it is kept at every iteration that is a multiple: what the run would
    return had it stopped there (a line search's rejected trial points never show)."""

    def __init__(self, snapshot_every: int | None = None):
        self.record: IterationRecord | None = None
        self.pixels: Tensor | None = None
        self.snapshot_every = snapshot_every
        self.snapshots: list[Snapshot] = []

    def offer(self, record: IterationRecord, pixels: Tensor) -> None:
        if self.record is None or record.total < self.record.total:
            self.record = record
            self.pixels = pixels.detach().clamp(0, 1).contiguous().clone()
        if self.snapshot_every and record.iteration % self.snapshot_every == 0 and self.pixels is not None:
            self.snapshots.append(Snapshot(record.iteration, record.scale, quantise(self.pixels).cpu()))

    def restore(self, record: IterationRecord | None, pixels: Tensor | None, snapshots: list[Snapshot]) -> None:
        """Where a checkpoint left it (see `checkpoint.Progress`)."""
        self.record, self.pixels, self.snapshots = record, pixels, list(snapshots)


class Convergence:
    """Early stop: the best loss improved by less than `tolerance` (relative) at each of the last `window` evaluations.

    The best-so-far loss is tracked, not the raw one, because a line search's rejected trial points are
    evaluations too and would look like lack of progress.
    """

    def __init__(self, tolerance: float | None, window: int):
        self.tolerance, self.window = tolerance, window
        self.best = float("inf")
        self.flat = 0
        self.stopped_at: int | None = None

    def update(self, record: IterationRecord) -> bool:
        if self.tolerance is None:
            return False
        if self.best < float("inf"):
            gain = (self.best - min(self.best, record.total)) / max(abs(self.best), 1e-30)
            self.flat = self.flat + 1 if gain < self.tolerance else 0
        self.best = min(self.best, record.total)
        if self.flat >= self.window and self.stopped_at is None:
            self.stopped_at = record.iteration
        return self.stopped_at is not None

    def state(self) -> tuple[float, int, int | None]:
        return self.best, self.flat, self.stopped_at

    def restore(self, state: tuple[float, int, int | None]) -> None:
        self.best, self.flat, self.stopped_at = state
