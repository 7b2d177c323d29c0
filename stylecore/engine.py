"""The optimisation: pixels pulled toward a content image's features and a style's Gram matrices.

`stylize` does one image, `stylize_batch` many of one size at once. Around the
Gatys loop sit what a bulk run needs: scales coarse to fine, colour control,
style blends, a memory plan (batch size, tiles) made before running and revised
on out-of-memory, and early stopping. Nothing here knows Prefect, storage or
terminals; progress goes to an optional callback.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

import torch.nn.functional as F

from . import colour, lockstep, memory
from . import weights as weights_mod
from .errors import BadOptions, NonFiniteLoss
from .features import Encoder, ModelSpec, model_spec
from .losses import content_loss_per_sample, style_loss_per_sample, tv_loss_per_sample
from .options import StyleOptions
from .targets import blended_grams, content_features, style_targets
from .tiling import optimise_tiled
from .tracking import IterationRecord


@dataclass(frozen=True)
class Plan:
    """Options with every default filled in for one model, preprocessing and output size."""

    spec: ModelSpec
    preprocessing: str
    content_layer: str
    style_layers: tuple[str, ...]
    content_weight: float
    style_weights: tuple[float, ...]
    tv_weight: float
    lr: float
    device: torch.device
    precision: str

    def as_dict(self) -> dict:
        return {
            "model": self.spec.name,
            "preprocessing": self.preprocessing,
            "content_layer": self.content_layer,
            "style_layers": list(self.style_layers),
            "content_weight": self.content_weight,
            "style_weights": list(self.style_weights),
            "tv_weight": self.tv_weight,
            "lr": self.lr,
            "device": str(self.device),
            "precision": self.precision,
        }


@dataclass
class Result:
    image: Tensor  # (1, 3, H, W) float32 on the CPU, in [0, 1]
    history: list[IterationRecord]  # every evaluation, in order
    best_iteration: int  # the evaluation whose image this is (the lowest total loss)
    plan: Plan
    weights_sha256: str
    weights_source: str
    seconds: float
    extra: dict = field(default_factory=dict)  # memory plan and fallbacks, scales, early stop: for meta.json

    @property
    def final(self) -> IterationRecord:
        """The losses of the returned image."""
        return self.history[self.best_iteration - 1]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadOptions(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BadOptions(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BadOptions("device 'mps' asked for, but MPS is not available here")
    return device


def cpu_supports_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device, model: str) -> str:
    """`auto` means bf16 where it was measured faster at the same final loss (bench/): CUDA with bf16,
    and VGG on CPUs with native bf16 (AVX512-BF16/AMX). SqueezeNet is too small to gain on a CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and model.startswith("vgg") and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def make_plan(options: StyleOptions, preprocessing: str, pixels: int, device: torch.device) -> Plan:
    spec = model_spec(options.model)
    defaults = spec.defaults[preprocessing]
    style_layers = tuple(options.style_layers or spec.style_layers)
    content_layer = options.content_layer or spec.content_layer
    for layer in (content_layer, *style_layers):
        try:
            spec.index_of(layer)
        except ValueError as exc:
            raise BadOptions(str(exc)) from None
    if options.style_weights is not None:
        style_weights = tuple(options.style_weights)
    elif options.style_layers is None:
        style_weights = defaults.style_weights
    else:
        style_weights = (sum(defaults.style_weights) / len(defaults.style_weights),) * len(style_layers)
    if len(style_weights) != len(style_layers):
        raise BadOptions(f"style_weights has {len(style_weights)} values but there are {len(style_layers)} style layers")
    content_weight = (
        options.content_weight
        if options.content_weight is not None
        else defaults.content_weight * spec.reference_pixels / pixels
    )
    return Plan(
        spec=spec,
        preprocessing=preprocessing,
        content_layer=content_layer,
        style_layers=style_layers,
        content_weight=content_weight,
        style_weights=style_weights,
        tv_weight=options.tv_weight if options.tv_weight is not None else defaults.tv_weight,
        lr=options.lr if options.lr is not None else (1.0 if options.optimizer == "lbfgs" else 0.02),
        device=device,
        precision=resolve_precision(options.precision, device, spec.name),
    )


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


def scale_sizes(height: int, width: int, scales: int) -> list[tuple[int, int]]:
    """(height, width) for each scale, coarse to fine, each twice the one before; none shorter than 64 px."""
    sizes = [(height, width)]
    for _ in range(scales - 1):
        h, w = sizes[0]
        if min(h, w) // 2 < 64:
            break
        sizes.insert(0, (round(h / 2), round(w / 2)))
    return sizes


def planned_iterations(options: StyleOptions, height: int, width: int) -> int:
    coarse = len(scale_sizes(height, width, options.scales)) - 1
    return options.iterations + coarse * (options.coarse_iterations or options.iterations)


def memory_estimate(options: StyleOptions, height: int, width: int, device: torch.device) -> memory.Estimate:
    """What one image of this size costs with these options (preprocessing changes loss weights, not memory)."""
    plan = make_plan(options, "caffe", height * width, device)
    dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float32
    return memory.estimate(plan.spec, _deepest(plan), height, width, options.optimizer, dtype)


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
        self.early_stops: dict[int, list[dict]] = {i: [] for i in range(len(jobs))}
        self.scales_log: list[dict] = []
        self.fallbacks: list[str] = []
        precision = resolve_precision(options.precision, device, options.model)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def clock(self) -> float:
        return time.perf_counter() - self.began

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
) -> list[Result | Exception]:
    """Stylise pairs of one output size together; a result, or that pair's own error, per job in order.

    The batch size is the most images the memory estimate fits in `memory_limit` (default: what the device
    has free), capped by `max_batch`. An image that does not fit alone is optimised in tiles at that scale.
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

    prepared = [_prepare(job, options, device) for job in jobs]
    sizes = _sizes_to_fit(run, height, width)
    starts: dict[int, Tensor] = {}
    bests: dict[int, tuple[Tensor, IterationRecord]] = {}
    for scale, (h, w) in enumerate(sizes):
        final = scale == len(sizes) - 1
        plan = make_plan(options, loaded.preprocessing, h * w, device)
        encoder = load_encoder(plan.spec, loaded, (plan.content_layer, *plan.style_layers), device, run.dtype)
        contents = {i: _resize(content, h, w) for i, (content, _) in enumerate(prepared)}
        for i in run.alive(range(len(jobs))):
            if scale == 0:
                starts[i] = _initial_image(contents[i], options)
            else:
                starts[i] = _resize(bests[i][0].to(device), h, w)
        grams = {i: _style_grams(run, encoder, plan, prepared[i][1], h / height) for i in run.alive(range(len(jobs)))}
        iterations = options.iterations if final else (options.coarse_iterations or options.iterations)
        scale_bests = _optimise_scale(run, encoder, plan, scale, (h, w), contents, grams, starts, iterations, final)
        bests.update(scale_bests)

    results: list[Result | Exception] = []
    seconds = run.clock()  # one batch, one duration: its pairs share it
    for i, job in enumerate(jobs):
        if i in run.errors:
            results.append(run.errors[i])
            continue
        image, record = bests[i]
        if options.colour == "luminance":
            image = colour.join_luminance(image.to(device), job.content.to(device))
        results.append(
            Result(
                image=image.float().cpu(),
                history=run.histories[i],
                best_iteration=record.iteration,
                plan=plan,
                weights_sha256=loaded.sha256,
                weights_source=loaded.source,
                seconds=seconds,
                extra={
                    "scales": [list(size[::-1]) for size in sizes],
                    "memory": {"budget_bytes": run.budget, "plan": run.scales_log, "fallbacks": run.fallbacks},
                    "early_stop": run.early_stops[i],
                    "batch_size": len(jobs),
                },
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


def _deepest(plan: Plan) -> int:
    return max(plan.spec.index_of(layer) for layer in (plan.content_layer, *plan.style_layers))


def _needs_tiles(run: _Run, plan: Plan, h: int, w: int) -> bool:
    cost = memory.estimate(plan.spec, _deepest(plan), h, w, run.options.optimizer, run.dtype)
    return cost.total(1) > run.budget


def _sizes_to_fit(run: _Run, height: int, width: int) -> list[tuple[int, int]]:
    """The scales asked for; when the output must be tiled and no coarser scale was asked for, add coarser ones
    until one fits whole, so the tiled scale starts from a converged image instead of from scratch."""
    sizes = scale_sizes(height, width, run.options.scales)
    plan = make_plan(run.options, run.loaded.preprocessing, height * width, run.device)
    tiled = run.options.tile is not None or _needs_tiles(run, plan, height, width)
    if tiled and len(sizes) == 1:
        ladder = scale_sizes(height, width, 6)  # every size scale_sizes allows, the output last
        start = next((i for i in range(len(ladder) - 2, -1, -1) if not _needs_tiles(run, plan, *ladder[i])), 0)
        sizes = ladder[start:]
        if len(sizes) > 1:
            run.fallbacks.append(f"{width}×{height} does not fit whole: started at {sizes[0][1]}×{sizes[0][0]}, tiled the output")
    return sizes


def _optimise_scale(run, encoder, plan, scale, size, contents, grams, starts, iterations, final):
    """Optimise every live image at one scale: batches as large as fit, tiles where one image does not;
    on out-of-memory, halve the batch, then tile, then halve the tile."""
    h, w = size
    options, deepest = run.options, _deepest(plan)
    cost = memory.estimate(plan.spec, deepest, h, w, options.optimizer, run.dtype)
    tile = options.tile if final else None
    if tile is None and cost.total(1) > run.budget:
        tile = memory.largest_tile(plan.spec, deepest, h, w, run.dtype, run.budget)
    pending = run.alive(sorted(starts))
    batch = 1 if tile else memory.largest_batch(cost, run.budget, min(len(pending), run.max_batch or len(pending)))

    def planned(batch: int, tile: int | None) -> dict:
        if tile:  # the worst-case piece, with Adam, plus the whole image's optimiser state
            piece = min(h, tile * 3 // 2), min(w, tile * 3 // 2)
            estimate = memory.estimate(plan.spec, deepest, *piece, "adam", run.dtype, image_pixels=h * w).total()
        else:
            estimate = cost.total(batch)
        return {"size": [w, h], "iterations": iterations, "estimate_bytes": estimate, "batch": batch, "tile": tile}

    entry = planned(batch, tile)
    run.scales_log.append(entry)
    bests: dict[int, tuple[Tensor, IterationRecord]] = {}
    while pending:
        chunk = pending[:batch]
        try:
            if tile:
                bests.update(_run_tiled(run, encoder, plan, scale, contents, grams, starts, chunk, iterations, tile))
            else:
                bests.update(_run_lockstep(run, encoder, plan, scale, contents, grams, starts, chunk, iterations))
            pending = pending[len(chunk):]
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            for i in chunk:  # what the failed attempt recorded is discarded: the chunk starts again
                run.histories[i] = [r for r in run.histories[i] if r.scale < scale]
            _free_cached(run.device)
            where = f"{w}×{h}"
            if not tile and batch > 1:
                batch = max(1, batch // 2)
                run.fallbacks.append(f"{where}: out of memory at batch {len(chunk)}, retried at batch {batch}")
            elif not tile:
                tile = min(memory.largest_tile(plan.spec, deepest, h, w, run.dtype, run.budget), max(h, w) // 2)
                tile = max(memory.MIN_TILE, tile // 64 * 64)
                run.fallbacks.append(f"{where}: out of memory for one image, retried in tiles of {tile}")
            elif tile > memory.MIN_TILE:
                smaller = max(memory.MIN_TILE, (tile // 2) // 64 * 64)
                run.fallbacks.append(f"{where}: out of memory in tiles of {tile}, retried in tiles of {smaller}")
                tile = smaller
            else:
                raise OutOfMemory(f"{where}: out of memory even in tiles of {tile} px ({exc})".splitlines()[0]) from exc
            entry.update(planned(batch, tile))
    return bests


def _first_iteration(run: _Run, index: int) -> int:
    return len(run.histories[index]) + 1


def _run_lockstep(run, encoder, plan, scale, contents, grams, starts, chunk, iterations):
    content_targets = torch.cat([content_features(encoder, plan.content_layer, contents[i]) for i in chunk])
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
        first_iteration={i: _first_iteration(run, i) for i in chunk},
        scale=scale,
        clock=run.clock,
        on_record=run.record,
        early_stop=(run.options.early_stop, run.options.early_stop_window),
    )
    bests = {}
    for i, outcome in outcomes.items():
        if outcome.error is not None:
            run.errors[i] = outcome.error
        elif outcome.best.record is None:
            run.errors[i] = NonFiniteLoss("no iteration finished")
        else:
            bests[i] = (outcome.best.pixels, outcome.best.record)
            if outcome.stopped_at is not None:
                run.early_stops[i].append({"scale": scale, "iteration": outcome.stopped_at})
    return bests


def _run_tiled(run, encoder, plan, scale, contents, grams, starts, chunk, iterations, tile):
    bests = {}
    for i in chunk:
        try:
            best, _, stopped_at = optimise_tiled(
                encoder, plan, contents[i], grams[i], starts[i],
                tile=tile, iterations=iterations, seed=run.options.seed + scale, first_iteration=_first_iteration(run, i),
                scale=scale, clock=run.clock, on_record=lambda record, i=i: run.record(i, record),
                early_stop=(run.options.early_stop, run.options.early_stop_window),
            )
        except NonFiniteLoss as exc:
            run.errors[i] = exc
            continue
        bests[i] = (best.pixels, best.record)
        if stopped_at is not None:
            run.early_stops[i].append({"scale": scale, "iteration": stopped_at})
    return bests
