"""Many images optimised as one batch, each exactly as it would be alone.

Batching pixels is easy; batching the optimiser is not. A joint L-BFGS over a
batch would share one curvature history and one line search between images that
have nothing to do with each other, so a batch would give other images than
one-by-one runs. Here every image keeps its own optimiser (torch's L-BFGS with
its strong-Wolfe line search, or Adam) in a thread of its own. Its closure does
not run the network: it posts the point it wants evaluated and waits. When every
image still running has posted, one batched forward+backward evaluates them all
and hands each its own loss and gradient (the losses are per-sample and summed,
so each image's gradient is its own). An image that converges or spends its
budget leaves; the batch shrinks.

Between two optimiser steps an image can hand out its whole state (`on_boundary`) and
go on from one later (`resume`): see `checkpoint.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .checkpoint import Progress
from .lbfgs import LBFGS
from .memory import LBFGS_HISTORY
from .tracking import BestImage, Convergence, IterationRecord

# evaluate({index: pixels}) → {index: (tensor [content, style, tv, total], gradient) or an exception for that image}
Evaluate = Callable[[dict[int, Tensor]], dict[int, "tuple[Tensor, Tensor] | Exception"]]
# on_boundary(index, evaluations this scale so far, capture): capture() is that image's Progress now
Boundary = Callable[[int, int, Callable[[], Progress]], None]


class _Finished(Exception):
    """Budget spent or converged: a line search may ask for more evaluations than the budget holds."""


class _BatchAborted(Exception):
    pass


@dataclass
class Outcome:
    best: BestImage
    history: list[IterationRecord]
    stopped_at: int | None = None
    error: Exception | None = None


class _Meeting:
    def __init__(self, indices):
        self.cond = threading.Condition()
        self.active = set(indices)
        self.pending: dict[int, Tensor] = {}
        self.answers: dict[int, object] = {}
        self.aborted = False

    def evaluate(self, index: int, pixels: Tensor):
        with self.cond:
            if self.aborted:
                raise _BatchAborted
            self.pending[index] = pixels
            self.cond.notify_all()
            self.cond.wait_for(lambda: index in self.answers or self.aborted)
            if index not in self.answers:
                raise _BatchAborted
            answer = self.answers.pop(index)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def leave(self, index: int) -> None:
        with self.cond:
            self.active.discard(index)
            self.cond.notify_all()

    def next_batch(self) -> dict[int, Tensor] | None:
        with self.cond:
            self.cond.wait_for(lambda: self.active <= self.pending.keys())
            if not self.active:
                return None
            batch, self.pending = self.pending, {}
            return batch

    def answer(self, answers: dict) -> None:
        with self.cond:
            self.answers.update(answers)
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()


def optimise(
    starts: dict[int, Tensor],
    evaluate: Evaluate,
    *,
    optimizer: str,
    lr: float,
    iterations: int,
    first_iteration: dict[int, int],
    scale: int,
    clock: Callable[[], float],
    on_record: Callable[[int, IterationRecord], None] | None = None,
    early_stop: tuple[float | None, int] = (None, 20),
    snapshot_every: int | None = None,
    resume: dict[int, Progress] | None = None,
    on_boundary: Boundary | None = None,
) -> dict[int, Outcome]:
    """Run each start's optimiser for `iterations` evaluations (fewer if it converges); evaluations are batched.
    An image in `resume` goes on from there (its start is not used); `on_boundary` is offered every image's
    state after each optimiser step that it goes on from."""
    meeting = _Meeting(starts)
    outcomes = {i: Outcome(BestImage(snapshot_every), []) for i in starts}

    def run(index: int) -> None:
        outcome = outcomes[index]
        saved = (resume or {}).get(index)
        begin = starts[index] if saved is None else saved.pixels
        pixels = begin.detach().clone().contiguous().requires_grad_(True)  # L-BFGS flattens it: contiguous
        convergence = Convergence(*early_stop)
        if optimizer == "lbfgs":
            # Every evaluation the strong-Wolfe line search makes is one forward+backward: one of the budget.
            opt = LBFGS(
                [pixels], lr=lr, max_iter=iterations, max_eval=iterations, tolerance_grad=-1, tolerance_change=-1,
                history_size=LBFGS_HISTORY, line_search_fn="strong_wolfe",
            )
        else:
            opt = torch.optim.Adam([pixels], lr=lr)
        if saved is not None:
            outcome.history = list(saved.history)
            outcome.best.restore(saved.best, saved.best_pixels, saved.snapshots)
            convergence.restore(saved.convergence)
            if optimizer == "lbfgs":
                opt.resume(saved.optimiser)
            else:
                opt.state[pixels] = {k: v.clone() for k, v in saved.optimiser.items()}

        def capture(optimiser_state: dict) -> Progress:
            best = outcome.best
            return Progress(
                pixels.detach().clone(), optimiser_state, list(outcome.history), best.record, best.pixels,
                list(best.snapshots), convergence.state(),
            )

        if on_boundary is not None and optimizer == "lbfgs":
            opt.on_boundary = lambda lbfgs_state: on_boundary(index, len(outcome.history), lambda: capture(lbfgs_state()))

        def closure() -> Tensor:
            if len(outcome.history) >= iterations or convergence.stopped_at is not None:
                raise _Finished
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                pixels.clamp_(0, 1)
            losses, gradient = meeting.evaluate(index, pixels.detach())
            pixels.grad = gradient
            c, s, t, total = losses.tolist()
            record = IterationRecord(first_iteration[index] + len(outcome.history), c, s, t, total, clock(), scale)
            outcome.history.append(record)
            outcome.best.offer(record, pixels)
            convergence.update(record)
            if on_record is not None:
                on_record(index, record)
            return losses[3]

        try:
            while True:
                opt.step(closure)
                if optimizer == "adam":
                    if len(outcome.history) >= iterations or convergence.stopped_at is not None:
                        break
                    if on_boundary is not None:
                        on_boundary(index, len(outcome.history), lambda: capture(_adam_state(opt, pixels)))
        except _Finished:
            pass
        except _BatchAborted:
            pass
        except Exception as exc:  # this image's own failure (a non-finite loss): the others go on
            outcome.error = exc
        finally:
            outcome.stopped_at = convergence.stopped_at
            meeting.leave(index)

    threads = [threading.Thread(target=run, args=(i,), name=f"stylize-image-{i}", daemon=True) for i in starts]
    for thread in threads:
        thread.start()
    try:
        while (batch := meeting.next_batch()) is not None:
            meeting.answer(evaluate(batch))
    except BaseException:
        meeting.abort()  # out of memory, or interrupted: every image stops, the caller decides what next
        raise
    finally:
        for thread in threads:
            thread.join()
    return outcomes


def _adam_state(opt: torch.optim.Adam, pixels: Tensor) -> dict:
    """Adam's step count and moments, copied (it updates them in place)."""
    return {k: v.clone() for k, v in opt.state[pixels].items()}
