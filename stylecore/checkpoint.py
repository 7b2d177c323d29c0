"""A pair's whole optimisation state between two optimiser steps: what a checkpoint holds.

`stylize_batch(..., on_checkpoint=...)` hands one of these out per image every
`checkpoint_every` iterations (at the first step boundary from there), and
`stylize_batch(..., resume=[...])` goes on from one exactly: the same evaluations, the
same floats, so the image and losses of a resumed run are those of a run never
stopped. What is kept: the image the optimiser holds, the optimiser's own state (L-BFGS's
working values and history, Adam's moments and step), the scale and the image that scale
started from, every iteration's record so far, the best image and its record, the early
stop's window, the snapshots so far and, in tiles, the random generator that shifts the
grid. Where to keep it is the caller's business; `to_record` gives only tensors, numbers,
strings, lists and dicts, so `torch.load(..., weights_only=True)` reads it back, and
`from_record` refuses anything that is not one, naming what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .memory import LBFGS_HISTORY
from .tracking import IterationRecord, Snapshot

FORMAT = 1


@dataclass
class Progress:
    """One image's optimisation of one scale, between two optimiser steps."""

    pixels: Tensor  # (1, 3, h, w) float32: the optimiser's variable, as it holds it
    optimiser: dict  # the optimiser's state: numbers, tensors and lists of tensors (see `_check_optimiser`)
    history: list[IterationRecord]  # this scale's evaluations
    best: IterationRecord | None  # this scale's lowest loss so far, and its image
    best_pixels: Tensor | None
    snapshots: list[Snapshot]  # this scale's
    convergence: tuple[float, int, int | None]  # the early stop's best loss, flat count and stop


@dataclass
class State:
    """What `on_checkpoint` receives and `resume` takes."""

    scale: int  # the scale being optimised, coarse to fine
    size: tuple[int, int]  # (height, width) of that scale
    mode: str  # how it is optimised: "lbfgs", "adam" or "tiled:<tile px>"
    start: Tensor  # (1, 3, h, w) the image that scale started from, to start it again if `mode` no longer applies
    progress: Progress
    earlier: list[IterationRecord] = field(default_factory=list)  # the scales before: their evaluations,
    early_stops: list[tuple[int, int]] = field(default_factory=list)  # their early stops as (scale, iteration),
    snapshots: list[Snapshot] = field(default_factory=list)  # and their snapshots

    @property
    def iteration(self) -> int:
        """Evaluations made so far, across scales: the run resumes at the next."""
        return len(self.earlier) + len(self.progress.history)

    @property
    def history(self) -> list[IterationRecord]:
        return self.earlier + self.progress.history

    def to_record(self) -> dict:
        """Plain data for `torch.save` (tensors where they are; a reader maps them to the CPU)."""
        p = self.progress
        return {
            "format": FORMAT,
            "scale": self.scale,
            "size": list(self.size),
            "mode": self.mode,
            "start": self.start,
            "pixels": p.pixels,
            "optimiser": p.optimiser,
            "history": _records_tensor(self.earlier + p.history),
            "scale_history": len(p.history),
            "best": None if p.best is None else _records_tensor([p.best]),
            "best_pixels": p.best_pixels,
            "snapshots": [{"iteration": s.iteration, "scale": s.scale, "pixels": s.pixels} for s in self.snapshots + p.snapshots],
            "scale_snapshots": len(p.snapshots),
            "convergence": list(p.convergence),
            "early_stops": [list(stop) for stop in self.early_stops],
        }

    @classmethod
    def from_record(cls, record: object) -> "State":
        """The state `record` describes, checked through; `ValueError` naming the first thing wrong."""
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"not a checkpoint of format {FORMAT}")
        scale, size, mode = record.get("scale"), record.get("size"), record.get("mode")
        if not _is_int(scale) or scale < 0:
            raise ValueError("scale: not a scale index")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
            raise ValueError("size: not (height, width)")
        h, w = size
        start = _image(record.get("start"), (1, 3, h, w), "start")
        pixels = _image(record.get("pixels"), (1, 3, h, w), "pixels")
        history = _records(record.get("history"), "history")
        in_scale = record.get("scale_history")
        if not _is_int(in_scale) or not 0 <= in_scale <= len(history):
            raise ValueError("scale_history: out of range")
        earlier, current = history[: len(history) - in_scale], history[len(history) - in_scale :]
        if any(r.scale >= scale for r in earlier) or any(r.scale != scale for r in current):
            raise ValueError("history: records out of their scales")
        if [r.iteration for r in history] != list(range(1, len(history) + 1)):
            raise ValueError("history: iterations not numbered 1, 2, 3, …")
        best = record.get("best")
        best = None if best is None else _records(best, "best")
        if best is not None and len(best) != 1:
            raise ValueError("best: not one record")
        best_pixels = record.get("best_pixels")
        if (best is None) != (best_pixels is None):
            raise ValueError("best: a record without its image, or an image without its record")
        if best_pixels is not None:
            best_pixels = _image(best_pixels, (1, 3, h, w), "best_pixels")
        snapshots = _snapshots(record.get("snapshots"))
        in_scale_snaps = record.get("scale_snapshots")
        if not _is_int(in_scale_snaps) or not 0 <= in_scale_snaps <= len(snapshots):
            raise ValueError("scale_snapshots: out of range")
        convergence = record.get("convergence")
        if not (
            isinstance(convergence, list) and len(convergence) == 3 and isinstance(convergence[0], float)
            and _is_int(convergence[1]) and (convergence[2] is None or _is_int(convergence[2]))
        ):
            raise ValueError("convergence: not (best, flat, stopped_at)")
        stops = record.get("early_stops")
        if not (isinstance(stops, list) and all(isinstance(s, list) and len(s) == 2 and all(map(_is_int, s)) for s in stops)):
            raise ValueError("early_stops: not a list of (scale, iteration)")
        optimiser = _check_optimiser(mode, record.get("optimiser"), 3 * h * w, (1, 3, h, w))
        cut = len(snapshots) - in_scale_snaps
        progress = Progress(
            pixels, optimiser, current, best[0] if best else None, best_pixels, snapshots[cut:], tuple(convergence)
        )
        return cls(scale, (h, w), mode, start, progress, earlier, [tuple(s) for s in stops], snapshots[:cut])

    def to(self, device: torch.device) -> "State":
        """This state with its optimiser's tensors on `device` (snapshots stay on the CPU)."""
        p = self.progress
        moved = Progress(
            p.pixels.to(device), _to(p.optimiser, device), p.history, p.best,
            None if p.best_pixels is None else p.best_pixels.to(device), p.snapshots, p.convergence,
        )
        return State(self.scale, self.size, self.mode, self.start.to(device), moved, self.earlier, self.early_stops, self.snapshots)


# --- checking what a record holds -----------------------------------------------------------------------------

_RECORD_FIELDS = ("iteration", "content", "style", "tv", "total", "seconds", "scale")


def _records_tensor(records: list[IterationRecord]) -> Tensor:
    rows = [[float(getattr(r, name)) for name in _RECORD_FIELDS] for r in records]
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(_RECORD_FIELDS))


def _records(value: object, name: str) -> list[IterationRecord]:
    if not (isinstance(value, Tensor) and value.dtype == torch.float64 and value.dim() == 2 and value.shape[1] == len(_RECORD_FIELDS)):
        raise ValueError(f"{name}: not a table of iteration records")
    rows = value.tolist()
    if not all(math.isfinite(x) for row in rows for x in row):
        raise ValueError(f"{name}: a value that is not finite")
    return [IterationRecord(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6])) for r in rows]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor(value: object, name: str, shape: tuple[int, ...] | None = None, dtype=torch.float32) -> Tensor:
    if not isinstance(value, Tensor) or value.dtype != dtype or value.layout != torch.strided:
        raise ValueError(f"{name}: not a {dtype} tensor")
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(f"{name}: shape {tuple(value.shape)}, expected {shape}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: a value that is not finite")
    return value


def _image(value: object, shape: tuple[int, ...], name: str) -> Tensor:
    return _tensor(value, name, shape).contiguous()


def _scalar(value: object, name: str) -> float | Tensor:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    dtype = value.dtype if isinstance(value, Tensor) and value.dtype in (torch.float32, torch.float64) else torch.float32
    return _tensor(value, name, (), dtype)


def _snapshots(value: object) -> list[Snapshot]:
    if not isinstance(value, list):
        raise ValueError("snapshots: not a list")
    snapshots = []
    for item in value:
        if not (isinstance(item, dict) and _is_int(item.get("iteration")) and _is_int(item.get("scale"))):
            raise ValueError("snapshots: an entry without its iteration and scale")
        pixels = _tensor(item.get("pixels"), "snapshots", dtype=torch.uint8)
        if pixels.dim() != 4 or pixels.shape[:2] != (1, 3):
            raise ValueError("snapshots: not an image")
        snapshots.append(Snapshot(item["iteration"], item["scale"], pixels))
    return snapshots


def _check_optimiser(mode: object, value: object, numel: int, shape: tuple[int, ...]) -> dict:
    if not isinstance(value, dict):
        raise ValueError("optimiser: not a dict")
    if mode == "lbfgs":
        return _check_lbfgs(value, numel)
    if mode == "adam":
        return _check_adam(value, shape)
    if isinstance(mode, str) and mode.startswith("tiled:") and mode[6:].isdigit():
        if not (_is_int(value.get("step")) and value["step"] >= 0):
            raise ValueError("optimiser.step: not a count")
        rng = _tensor(value.get("rng"), "optimiser.rng", dtype=torch.uint8)
        energy = value.get("energy")
        if not isinstance(energy, float) or not math.isfinite(energy):
            raise ValueError("optimiser.energy: not a number")
        return {"step": value["step"], "adam": _check_adam(value.get("adam"), shape), "rng": rng, "energy": energy}
    raise ValueError(f"mode: unknown {mode!r}")


def _check_adam(value: object, shape: tuple[int, ...]) -> dict:
    if not isinstance(value, dict):
        raise ValueError("optimiser: not Adam's state")
    step = _tensor(value.get("step"), "optimiser.step", ())
    return {
        "step": step,
        "exp_avg": _tensor(value.get("exp_avg"), "optimiser.exp_avg", shape),
        "exp_avg_sq": _tensor(value.get("exp_avg_sq"), "optimiser.exp_avg_sq", shape),
    }


def _check_lbfgs(value: dict, numel: int) -> dict:
    out = {}
    for name in ("current_evals", "n_iter", "state_n_iter", "func_evals"):
        if not (_is_int(value.get(name)) and value[name] >= 0):
            raise ValueError(f"optimiser.{name}: not a count")
        out[name] = value[name]
    if out["state_n_iter"] < 1:
        raise ValueError("optimiser.state_n_iter: a state before the first iteration")
    for name in ("loss", "prev_loss"):
        if not isinstance(value.get(name), float) or not math.isfinite(value[name]):
            raise ValueError(f"optimiser.{name}: not a number")
        out[name] = value[name]
    for name in ("flat_grad", "d", "prev_flat_grad"):
        out[name] = _tensor(value.get(name), f"optimiser.{name}", (numel,))
    out["t"] = _scalar(value.get("t"), "optimiser.t")
    out["H_diag"] = _scalar(value.get("H_diag"), "optimiser.H_diag")
    lists = [value.get(name) for name in ("old_dirs", "old_stps", "ro")]
    if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1 or len(lists[0]) > LBFGS_HISTORY:
        raise ValueError("optimiser: L-BFGS history lists of different lengths")
    out["old_dirs"] = [_tensor(v, "optimiser.old_dirs", (numel,)) for v in lists[0]]
    out["old_stps"] = [_tensor(v, "optimiser.old_stps", (numel,)) for v in lists[1]]
    out["ro"] = [_tensor(v, "optimiser.ro", ()) for v in lists[2]]
    return out


def _to(value, device: torch.device):
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        # a generator's state and Adam's step count stay on the CPU, where torch keeps them
        return {k: (v if k in ("rng", "step") else _to(v, device)) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value
