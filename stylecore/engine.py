"""The optimisation: pixels pulled toward a content image's features and a style's Gram matrices.

`stylize` does one image, `stylize_batch` many of one size at once. The loop runs
what `planning.py` decided (device, precision, loss weights, scales, memory plan),
revises the plan on out-of-memory, and returns a typed record of what it did.
Nothing here knows Prefect, storage or terminals; progress goes to an optional
callback, and so does each image's whole state every `checkpoint_every` iterations
(`on_checkpoint`), which `resume` takes back to go on exactly where it was.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

import torch.nn.functional as F

from . import colour, lockstep, memory
from . import weights as weights_mod
from .checkpoint import State
from .errors import BadOptions, NonFiniteLoss
from .features import Encoder, ModelSpec, model_spec
from .images import quantise
from .losses import content_loss_per_sample, style_loss_per_sample, tv_loss_per_sample
from .options import StyleOptions
from .planning import Plan, make_plan, resolve_device, sizes_to_fit
from .targets import blended_grams, content_features, style_targets
from .tiling import optimise_tiled
from .tracking import IterationRecord, Snapshot


@dataclass(frozen=True)
class ScaleRun:
    """One scale as it ran: its size, iterations and memory plan (revised if it ran out of memory)."""

    size: tuple[int, int]  # (width, height)
    iterations: int
    estimate_bytes: int
    batch: int
    tile: int | None


@dataclass(frozen=True)
class EarlyStop:
    scale: int
    iteration: int


@dataclass
class Result:
    image: Tensor  # (1, 3, H, W) float32 on the CPU, in [0, 1]
    history: list[IterationRecord]  # every evaluation, in order
    best_iteration: int  # the evaluation whose image this is (the lowest total loss)
    plan: Plan
    weights_sha256: str
    weights_source: str
    seconds: float
    scales: list[ScaleRun]
    memory_budget: int
    fallbacks: list[str]  # every out-of-memory step taken, in words
    early_stops: list[EarlyStop]
    batch_size: int  # images optimised together with this one, itself included
    # Σ P² over the content layer's target features at the output size: what the content loss divided by its
    # weight is measured against, so how far the content drifted can be told apart from how it was weighted
    content_energy: float
    snapshots: list[Snapshot]  # with snapshot_every: the best image every N iterations, each at its scale's size
    resumed_from: int | None = None  # with `resume`: the iterations taken over from the state (None: started afresh)

    @property
    def final(self) -> IterationRecord:
        """The losses of the returned image."""
        return self.history[self.best_iteration - 1]

    def memory_record(self) -> dict:
        """The memory plan as meta.json keeps it."""
        plan = [{"size": list(s.size), "iterations": s.iterations, "estimate_bytes": s.estimate_bytes, "batch": s.batch, "tile": s.tile} for s in self.scales]
        return {"budget_bytes": self.memory_budget, "plan": plan, "fallbacks": list(self.fallbacks)}


# --- weights and encoders, loaded once per process -------------------------------------------------

_cache_lock = threading.Lock()
_weights_cache: dict[tuple, weights_mod.LoadedWeights] = {}
_encoder_cache: dict[tuple, Encoder] = {}


def load_weights(options: StyleOptions) -> weights_mod.LoadedWeights:
    """The weights `options` name (a local file) or the model's default; cached by file identity."""
    spec = model_spec(options.model)
    if options.weights is None:
        key: tuple = ("default", spec.name)
    else:
        if "://" in options.weights and not options.weights.startswith("file://"):
            raise BadOptions(f"weights {options.weights!r}: the engine reads local files; load remote ones first")
        path = Path(options.weights.removeprefix("file://")).expanduser()
        stat = path.stat() if path.is_file() else None
        key = ("file", str(path.resolve()), stat and stat.st_mtime_ns, stat and stat.st_size)
    with _cache_lock:
        if key not in _weights_cache:
            _weights_cache[key] = (
                weights_mod.resolve_default(spec) if options.weights is None else weights_mod.load_weights_file(path)
            )
        return _weights_cache[key].with_preprocessing(options.preprocessing)


def load_encoder(
    spec: ModelSpec,
    loaded: weights_mod.LoadedWeights,
    layers: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Encoder:
    key = (spec.name, loaded.sha256, loaded.preprocessing, tuple(sorted(set(layers))), str(device), dtype)
    with _cache_lock:
        encoder = _encoder_cache.get(key)
        if encoder is None:
            features = spec.build()
            weights_mod.install_state_dict(spec, features, loaded)
            encoder = Encoder(spec, features, loaded.preprocessing, layers, compute_dtype=dtype).to(device)
            encoder = encoder.to(memory_format=torch.channels_last)
            _encoder_cache[key] = encoder
    return encoder


# --- one size, many images ------------------------------------------------------------------------


@dataclass
class Job:
    """One pair: the content at the output size, and its style(s) at the style size, each with a blend weight."""

    content: Tensor  # (1, 3, H, W) in [0, 1]
    styles: list[tuple[Tensor, float]]


class OutOfMemory(RuntimeError):
    """Out of memory with no smaller batch or tile left to try."""


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)








def _resize(image: Tensor, height: int, width: int) -> Tensor:
    if tuple(image.shape[-2:]) == (height, width):
        return image
    shrinking = height < image.shape[-2]
    return F.interpolate(image, size=(height, width), mode="bicubic", antialias=shrinking, align_corners=False).clamp(0, 1)


def _resize_by(image: Tensor, factor: float) -> Tensor:
    h, w = image.shape[-2:]
    factor = min(1.0, max(factor, 32 / min(h, w)))  # the deepest layers need a few pixels left
    return _resize(image, max(1, round(h * factor)), max(1, round(w * factor)))


def _free_cached(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Run:
    """One call of `stylize_batch`: what every scale shares."""

    def __init__(self, jobs, options, loaded, device, budget, on_iteration, max_batch):
        self.options, self.loaded, self.device, self.budget = options, loaded, device, budget
        self.on_iteration, self.max_batch = on_iteration, max_batch
        self.began = time.perf_counter()
        self.histories: dict[int, list[IterationRecord]] = {i: [] for i in range(len(jobs))}
        self.errors: dict[int, Exception] = {}
        self.early_stops: dict[int, list[EarlyStop]] = {i: [] for i in range(len(jobs))}
        self.scales: list[ScaleRun] = []
        self.fallbacks: list[str] = []
        self.content_energy: dict[int, float] = {}  # the latest scale's: the output size's once all have run
        self.snapshots: dict[int, list[Snapshot]] = {i: [] for i in range(len(jobs))}
        self.on_checkpoint: Callable[[int, State], None] | None = None
        self.checkpoint_every = 0
        self.next_checkpoint: dict[int, int] = {i: 0 for i in range(len(jobs))}
        self.resumed_from: dict[int, int | None] = {i: None for i in range(len(jobs))}

    def clock(self) -> float:
        return time.perf_counter() - self.began

    def adopt(self, index: int, state: State) -> None:
        """Take over what `state` says the scales before its own did; its own scale is taken up by `_take_resume`."""
        self.histories[index] = list(state.earlier)
        self.early_stops[index] = [EarlyStop(scale, iteration) for scale, iteration in state.early_stops]
        self.snapshots[index] = list(state.snapshots)
        if self.checkpoint_every:
            self.next_checkpoint[index] = (state.iteration // self.checkpoint_every + 1) * self.checkpoint_every
        history = state.history
        if history:  # the clock goes on from the checkpoint's: seconds count optimisation, not the time it was down
            self.began = min(self.began, time.perf_counter() - history[-1].seconds)

    def boundary(self, index: int, scale: int, size, mode: str, start: Tensor, iteration: int, capture) -> None:
        """Between two optimiser steps of image `index`, `iteration` evaluations in: a checkpoint if one is due."""
        if not self.checkpoint_every or iteration < self.next_checkpoint[index]:
            return
        self.next_checkpoint[index] = (iteration // self.checkpoint_every + 1) * self.checkpoint_every
        progress = capture()
        earlier = self.histories[index][: iteration - len(progress.history)]
        stops = [(stop.scale, stop.iteration) for stop in self.early_stops[index]]
        self.on_checkpoint(index, State(scale, size, mode, start, progress, earlier, stops, list(self.snapshots[index])))

    def record(self, index: int, record: IterationRecord) -> None:
        self.histories[index].append(record)
        if self.on_iteration is not None:
            self.on_iteration(index, record)

    def alive(self, indices) -> list[int]:
        return [i for i in indices if i not in self.errors]


def _prepare(job: Job, options: StyleOptions, device: torch.device) -> tuple[Tensor, list[tuple[Tensor, float]]]:
    """The content and styles as the network will see them, colour option applied."""
    content = job.content.to(device)
    styles = [(style.to(device), weight) for style, weight in job.styles]
    if options.colour == "histogram":
        styles = [(colour.match_histograms(style, content), weight) for style, weight in styles]
    elif options.colour == "luminance":
        greys = [colour.luminance_inputs(content, style) for style, _ in styles]
        content = greys[0][0]
        styles = [(grey_style, weight) for (_, grey_style), (_, weight) in zip(greys, styles)]
    return content, styles


def stylize_batch(
    jobs: list[Job],
    options: StyleOptions | None = None,
    on_iteration: Callable[[int, IterationRecord], None] | None = None,
    weights: weights_mod.LoadedWeights | None = None,
    memory_limit: int | None = None,
    max_batch: int | None = None,
    on_checkpoint: Callable[[int, State], None] | None = None,
    resume: list[State | None] | None = None,
) -> list[Result | Exception]:
    """Stylise pairs of one output size together; a result, or that pair's own error, per job in order.

    The batch size is the most images the memory estimate fits in `memory_limit` (default: what the device
    has free), capped by `max_batch`. An image that does not fit alone is optimised in tiles at that scale.

    With `on_checkpoint`, each image's whole state goes to `on_checkpoint(index, state)` at the first step
    boundary from every `options.checkpoint_every` iterations (from the image's own thread: keep it quick, and
    the state's tensors are its own, never changed afterwards). `resume[index]`, such a state, makes that image
    go on from there exactly; a state for other scales than these options plan is not used, and one whose
    optimiser no longer applies (a scale now tiled, say) starts its scale again from where that scale began.
    """
    options = options or StyleOptions()
    if not jobs:
        return []
    shapes = {tuple(job.content.shape) for job in jobs}
    if len(shapes) != 1:
        raise BadOptions(f"a batch needs one content size; got {sorted(shapes)}")
    if any(not job.styles or any(w <= 0 for _, w in job.styles) for job in jobs):
        raise BadOptions("every pair needs at least one style, each with a positive weight")
    device = resolve_device(options.device)
    loaded = weights.with_preprocessing(options.preprocessing) if weights else load_weights(options)
    height, width = jobs[0].content.shape[-2:]
    run = _Run(jobs, options, loaded, device, memory_limit or memory.device_budget(device), on_iteration, max_batch)
    if on_checkpoint is not None and options.checkpoint_every:
        run.on_checkpoint, run.checkpoint_every = on_checkpoint, options.checkpoint_every
        run.next_checkpoint = {i: options.checkpoint_every for i in range(len(jobs))}

    prepared = [_prepare(job, options, device) for job in jobs]
    fitted = sizes_to_fit(options, make_plan(options, loaded.preprocessing, height * width, device), height, width, run.budget)
    sizes = fitted.sizes
    if fitted.note:
        run.fallbacks.append(fitted.note)
    states = _usable_states(resume, len(jobs), sizes, device)
    for i, state in states.items():
        run.adopt(i, state)
    bests: dict[int, tuple[Tensor, IterationRecord]] = {}
    for scale, (h, w) in enumerate(sizes):
        final = scale == len(sizes) - 1
        plan = make_plan(options, loaded.preprocessing, h * w, device)
        iterations = options.iterations if final else (options.coarse_iterations or options.iterations)
        live = run.alive(range(len(jobs)))
        here = [i for i in live if i not in states or states[i].scale <= scale]  # the others resume at a later scale
        if not here:
            batch, tile = _memory_plan(run, plan, h, w, len(live), run.options.tile if final else None)
            run.scales.append(_scale_run(run, plan, (h, w), iterations, batch, tile))
            continue
        encoder = load_encoder(plan.spec, loaded, (plan.content_layer, *plan.style_layers), device, plan.dtype)
        contents = {i: _resize(prepared[i][0], h, w) for i in here}
        starts: dict[int, Tensor] = {}
        resuming: dict[int, State] = {}
        for i in here:
            if i in states and states[i].scale == scale:
                starts[i], resuming[i] = states[i].start, states[i]
            elif scale == 0:
                starts[i] = _initial_image(contents[i], options)
            else:
                starts[i] = _resize(bests[i][0].to(device), h, w)
        grams = {i: _style_grams(run, encoder, plan, prepared[i][1], h / height) for i in here}
        scale_bests = _optimise_scale(run, encoder, plan, scale, (h, w), contents, grams, starts, iterations, final, resuming)
        bests.update(scale_bests)

    results: list[Result | Exception] = []
    seconds = run.clock()  # one batch, one duration: its pairs share it
    for i, job in enumerate(jobs):
        if i in run.errors:
            results.append(run.errors[i])
            continue
        image, record = bests[i]
        snapshots = run.snapshots[i]
        if options.colour == "luminance":
            image = colour.join_luminance(image.to(device), job.content.to(device))
            snapshots = [_in_content_colours(snapshot, job.content) for snapshot in snapshots]
        results.append(
            Result(
                image=image.float().cpu(),
                history=run.histories[i],
                best_iteration=record.iteration,
                plan=plan,
                weights_sha256=loaded.sha256,
                weights_source=loaded.source,
                seconds=seconds,
                scales=list(run.scales),
                memory_budget=run.budget,
                fallbacks=list(run.fallbacks),
                early_stops=run.early_stops[i],
                batch_size=len(jobs),
                content_energy=run.content_energy[i],
                snapshots=snapshots,
                resumed_from=run.resumed_from[i],
            )
        )
    return results


def stylize(
    content: Tensor,
    style: Tensor | list[tuple[Tensor, float]],
    options: StyleOptions | None = None,
    on_iteration: Callable[[IterationRecord], None] | None = None,
    weights: weights_mod.LoadedWeights | None = None,
    memory_limit: int | None = None,
) -> Result:
    """Optimise an image that has `content`'s features and `style`'s Gram matrices (or a weighted blend of styles).

    `content` and styles are (1, 3, H, W) tensors in [0, 1] at the sizes to use (see `images.load`);
    the output has the content's size.
    """
    styles = [(style, 1.0)] if isinstance(style, Tensor) else list(style)
    callback = (lambda _, record: on_iteration(record)) if on_iteration else None
    (outcome,) = stylize_batch([Job(content, styles)], options, callback, weights, memory_limit)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _in_content_colours(snapshot: Snapshot, content: Tensor) -> Snapshot:
    """A luminance-only snapshot with the content's colours joined, as the output gets them."""
    h, w = snapshot.pixels.shape[-2:]
    joined = colour.join_luminance(snapshot.pixels.float().div(255), _resize(content.cpu(), h, w))
    return replace(snapshot, pixels=quantise(joined))


def _usable_states(resume, count: int, sizes, device) -> dict[int, State]:
    """The states in `resume` made for these scales, on `device`."""
    states = {}
    for i, state in enumerate((resume or [])[:count]):
        if state is not None and state.scale < len(sizes) and tuple(state.size) == tuple(sizes[state.scale]):
            states[i] = state.to(device)
    return states


def _take_resume(run: _Run, chunk, resuming: dict[int, State], scale: int, mode: str) -> dict:
    """The progress each image of `chunk` goes on from at this scale, its history set to match: a state's own
    where its optimiser is `mode`; otherwise the scale starts afresh (from the state's start, if any)."""
    taken = {}
    for i in chunk:
        state = resuming.get(i)
        if state is not None and state.mode == mode:
            taken[i] = state.progress
            run.histories[i] = state.history
            run.resumed_from[i] = state.iteration
        else:
            run.histories[i] = [r for r in run.histories[i] if r.scale < scale]
            if state is not None:
                run.resumed_from[i] = len(run.histories[i]) or None
    return taken


def _scale_first_iteration(run: _Run, index: int, scale: int) -> int:
    """The iteration number of this scale's first evaluation: one after every earlier scale's."""
    return sum(1 for r in run.histories[index] if r.scale < scale) + 1


def _initial_image(content: Tensor, options: StyleOptions) -> Tensor:
    if options.init == "content":
        return content.clone()
    generator = torch.Generator().manual_seed(options.seed)
    return torch.rand(content.shape, generator=generator).to(content.device)


def _style_grams(run: _Run, encoder: Encoder, plan: Plan, styles, factor: float) -> tuple[Tensor, ...]:
    """The (blended) Gram targets at this scale: style images shrink with the output, from the style cache."""
    per_style = [
        style_targets.grams(encoder, run.loaded.sha256, plan.style_layers, _resize_by(style, factor)) for style, _ in styles
    ]
    return per_style[0] if len(per_style) == 1 else blended_grams(per_style, [w for _, w in styles])








def _optimise_scale(run, encoder, plan, scale, size, contents, grams, starts, iterations, final, resuming=None):
    """Optimise every live image at one scale: batches as large as fit, tiles where one image does not;
    on out-of-memory, halve the batch, then tile, then halve the tile. Images in `resuming` go on from their
    states."""
    resuming = resuming or {}
    h, w = size
    pending = run.alive(sorted(starts))
    batch, tile = _memory_plan(run, plan, h, w, len(pending), run.options.tile if final else None)
    run.scales.append(_scale_run(run, plan, size, iterations, batch, tile))
    bests: dict[int, tuple[Tensor, IterationRecord]] = {}
    while pending:
        chunk = pending[:batch]
        try:
            if tile:
                bests.update(_run_tiled(run, encoder, plan, scale, contents, grams, starts, chunk, iterations, tile, resuming))
            else:
                bests.update(_run_lockstep(run, encoder, plan, scale, contents, grams, starts, chunk, iterations, resuming))
            pending = pending[len(chunk):]
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            for i in chunk:  # what the failed attempt recorded is discarded: the chunk starts again
                run.histories[i] = [r for r in run.histories[i] if r.scale < scale]
            _free_cached(run.device)
            batch, tile = _smaller_plan(run, plan, h, w, len(chunk), batch, tile, exc)
            run.scales[-1] = _scale_run(run, plan, size, iterations, batch, tile)
    return bests


def _memory_plan(run, plan, h, w, images, tile):
    """(batch, tile) for a scale: as many images as the budget fits, or tiles where one does not fit alone."""
    cost = memory.estimate(plan.spec, plan.deepest, h, w, run.options.optimizer, plan.dtype)
    if tile is None and cost.total(1) > run.budget:
        tile = memory.largest_tile(plan.spec, plan.deepest, h, w, plan.dtype, run.budget)
    if tile:
        return 1, tile
    return memory.largest_batch(cost, run.budget, min(images, run.max_batch or images)), None


def _smaller_plan(run, plan, h, w, tried, batch, tile, exc):
    """The next rung of the out-of-memory ladder, noted in the run's fallbacks."""
    where = f"{w}×{h}"
    if not tile and batch > 1:
        batch = max(1, batch // 2)
        run.fallbacks.append(f"{where}: out of memory at batch {tried}, retried at batch {batch}")
    elif not tile:
        tile = min(memory.largest_tile(plan.spec, plan.deepest, h, w, plan.dtype, run.budget), max(h, w) // 2)
        tile = max(memory.MIN_TILE, tile // 64 * 64)
        run.fallbacks.append(f"{where}: out of memory for one image, retried in tiles of {tile}")
    elif tile > memory.MIN_TILE:
        smaller = max(memory.MIN_TILE, (tile // 2) // 64 * 64)
        run.fallbacks.append(f"{where}: out of memory in tiles of {tile}, retried in tiles of {smaller}")
        tile = smaller
    else:
        raise OutOfMemory(f"{where}: out of memory even in tiles of {tile} px ({exc})".splitlines()[0]) from exc
    return batch, tile


def _scale_run(run, plan, size, iterations, batch, tile) -> ScaleRun:
    h, w = size
    if tile:  # the worst-case piece, with Adam, plus the whole image's optimiser state
        piece = min(h, tile * 3 // 2), min(w, tile * 3 // 2)
        estimate = memory.estimate(plan.spec, plan.deepest, *piece, "adam", plan.dtype, image_pixels=h * w).total()
    else:
        estimate = memory.estimate(plan.spec, plan.deepest, h, w, run.options.optimizer, plan.dtype).total(batch)
    return ScaleRun((w, h), iterations, estimate, batch, tile)


def _first_iteration(run: _Run, index: int) -> int:
    return len(run.histories[index]) + 1


def _run_lockstep(run, encoder, plan, scale, contents, grams, starts, chunk, iterations, resuming):
    mode = run.options.optimizer
    progress = _take_resume(run, chunk, resuming, scale, mode)
    first = {i: _scale_first_iteration(run, i, scale) for i in chunk}
    size = tuple(contents[chunk[0]].shape[-2:])
    content_targets = torch.cat([content_features(encoder, plan.content_layer, contents[i]) for i in chunk])
    energies = content_targets.square().flatten(1).sum(1).tolist()
    gram_targets = [torch.stack([grams[i][layer] for i in chunk]) for layer in range(len(plan.style_layers))]
    row_of = {index: row for row, index in enumerate(chunk)}

    def evaluate(batch: dict[int, Tensor]) -> dict:
        order = sorted(batch)
        rows = torch.tensor([row_of[i] for i in order], device=run.device)
        pixels = torch.cat([batch[i] for i in order]).requires_grad_(True)
        feats = {name: value.float() for name, value in encoder(pixels).items()}  # losses in fp32
        c = content_loss_per_sample(plan.content_weight, feats[plan.content_layer], content_targets[rows])
        s = style_loss_per_sample(feats, plan.style_layers, [g[rows] for g in gram_targets], plan.style_weights)
        t = tv_loss_per_sample(pixels, plan.tv_weight)
        total = c + s + t
        total.sum().backward()
        losses = torch.stack([c, s, t, total], dim=1).detach().cpu()  # one device sync for the whole batch
        answers = {}
        for row, index in enumerate(order):
            if math.isfinite(losses[row, 3].item()):
                answers[index] = (losses[row], pixels.grad[row : row + 1])
            else:
                iteration = _first_iteration(run, index)
                answers[index] = NonFiniteLoss(
                    f"loss became {losses[row, 3].item()} near iteration {iteration}; lower the learning rate or the weights"
                )
        return answers

    outcomes = lockstep.optimise(
        {i: starts[i] for i in chunk},
        evaluate,
        optimizer=run.options.optimizer,
        lr=plan.lr,
        iterations=iterations,
        first_iteration=first,
        scale=scale,
        clock=run.clock,
        on_record=run.record,
        early_stop=(run.options.early_stop, run.options.early_stop_window),
        snapshot_every=run.options.snapshot_every,
        resume=progress,
        on_boundary=(
            (lambda i, count, capture: run.boundary(i, scale, size, mode, starts[i], first[i] - 1 + count, capture))
            if run.on_checkpoint else None
        ),
    )
    bests = {}
    for i, outcome in outcomes.items():
        if outcome.error is not None:
            run.errors[i] = outcome.error
        elif outcome.best.record is None:
            run.errors[i] = NonFiniteLoss("no iteration finished")
        else:
            bests[i] = (outcome.best.pixels, outcome.best.record)
            run.content_energy[i] = energies[row_of[i]]
            run.snapshots[i] += outcome.best.snapshots
            if outcome.stopped_at is not None:
                run.early_stops[i].append(EarlyStop(scale, outcome.stopped_at))
    return bests


def _run_tiled(run, encoder, plan, scale, contents, grams, starts, chunk, iterations, tile, resuming):
    bests = {}
    mode = f"tiled:{tile}"
    progress = _take_resume(run, chunk, resuming, scale, mode)
    for i in chunk:
        first, size = _scale_first_iteration(run, i, scale), tuple(contents[i].shape[-2:])
        boundary = (
            (lambda count, capture, i=i, first=first, size=size: run.boundary(i, scale, size, mode, starts[i], first - 1 + count, capture))
            if run.on_checkpoint else None
        )
        try:
            best, _, stopped_at, energy = optimise_tiled(
                encoder, plan, contents[i], grams[i], starts[i],
                tile=tile, iterations=iterations, seed=run.options.seed + scale, first_iteration=first,
                scale=scale, clock=run.clock, on_record=lambda record, i=i: run.record(i, record),
                early_stop=(run.options.early_stop, run.options.early_stop_window),
                snapshot_every=run.options.snapshot_every, resume=progress.get(i), on_boundary=boundary,
            )
        except NonFiniteLoss as exc:
            run.errors[i] = exc
            continue
        bests[i] = (best.pixels, best.record)
        run.content_energy[i] = energy
        run.snapshots[i] += best.snapshots
        if stopped_at is not None:
            run.early_stops[i].append(EarlyStop(scale, stopped_at))
    return bests
