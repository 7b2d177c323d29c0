"""The optimisation loop: pixels of one image pulled toward a content image's features and a style image's Grams.

`stylize` knows nothing of Prefect, storage or terminals. It reports each
iteration to an optional callback, and callers turn that into progress bars,
artifacts or logs.
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

from . import weights as weights_mod
from .errors import BadOptions, NonFiniteLoss
from .features import Encoder, ModelSpec, model_spec
from .losses import content_loss, gram_matrix, style_loss, tv_loss
from .options import StyleOptions


@dataclass(frozen=True)
class IterationRecord:
    iteration: int  # 1-based
    content: float
    style: float
    tv: float
    total: float
    seconds: float  # since the optimisation started


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
    extra: dict = field(default_factory=dict)

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


# --- the loop ----------------------------------------------------------------------------------------


class _BudgetSpent(Exception):
    pass


class _Best:
    """The lowest-loss image evaluated so far: the one returned, so the image and its reported losses agree."""

    def __init__(self):
        self.record: IterationRecord | None = None
        self.pixels: Tensor | None = None

    def offer(self, record: IterationRecord, pixels: Tensor) -> None:
        if self.record is None or record.total < self.record.total:
            self.record = record
            self.pixels = pixels.detach().clamp(0, 1).contiguous().clone()


class _Targets:
    """What the image is pulled toward: computed once, before the first iteration."""

    def __init__(self, encoder: Encoder, plan: Plan, content: Tensor, style: Tensor):
        with torch.no_grad():
            content_feats = encoder(content)
            style_feats = encoder(style)
        self.content = content_feats[plan.content_layer].float()
        self.grams = [gram_matrix(style_feats[layer].float()) for layer in plan.style_layers]


def stylize(
    content: Tensor,
    style: Tensor,
    options: StyleOptions | None = None,
    on_iteration: Callable[[IterationRecord], None] | None = None,
    weights: weights_mod.LoadedWeights | None = None,
) -> Result:
    """Optimise an image that has `content`'s features and `style`'s Gram matrices.

    `content` and `style` are (1, 3, H, W) tensors in [0, 1] at the sizes to use
    (see `images.load`); the output has the content's size.
    """
    options = options or StyleOptions()
    device = resolve_device(options.device)
    loaded = weights.with_preprocessing(options.preprocessing) if weights else load_weights(options)
    plan = make_plan(options, loaded.preprocessing, content.shape[-2] * content.shape[-1], device)
    dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float32
    encoder = load_encoder(plan.spec, loaded, (plan.content_layer, *plan.style_layers), device, dtype)

    content, style = content.to(device), style.to(device)
    targets = _Targets(encoder, plan, content, style)

    if options.init == "content":
        start = content.clone()
    else:
        generator = torch.Generator().manual_seed(options.seed)
        start = torch.rand(content.shape, generator=generator).to(device)
    pixels = start.contiguous().requires_grad_(True)  # L-BFGS flattens its parameter: keep it contiguous

    history: list[IterationRecord] = []
    best = _Best()
    began = time.perf_counter()

    def closure() -> Tensor:
        if len(history) >= options.iterations:
            raise _BudgetSpent  # a line search may ask for more evaluations than the budget holds
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            pixels.clamp_(0, 1)
        feats = {name: value.float() for name, value in encoder(pixels).items()}  # losses in fp32
        c = content_loss(plan.content_weight, feats[plan.content_layer], targets.content)
        s = style_loss(feats, plan.style_layers, targets.grams, plan.style_weights)
        t = tv_loss(pixels, plan.tv_weight)
        total = c + s + t
        total.backward()
        values = torch.stack([c.detach(), s.detach(), t.detach(), total.detach()]).tolist()
        if not math.isfinite(values[3]):
            raise NonFiniteLoss(
                f"loss became {values[3]} at iteration {len(history) + 1}; lower the learning rate or the weights"
            )
        record = IterationRecord(len(history) + 1, *values, seconds=time.perf_counter() - began)
        history.append(record)
        best.offer(record, pixels)
        if on_iteration is not None:
            on_iteration(record)
        return total

    try:
        if options.optimizer == "lbfgs":
            # Strong-Wolfe line search keeps L-BFGS from the wild first steps it takes without one; every
            # evaluation it makes is one forward+backward and counts as one iteration of the budget.
            optimizer = torch.optim.LBFGS(
                [pixels],
                lr=plan.lr,
                max_iter=options.iterations,
                max_eval=options.iterations,
                tolerance_grad=-1,
                tolerance_change=-1,
                history_size=50,
                line_search_fn="strong_wolfe",
            )
            while len(history) < options.iterations:
                optimizer.step(closure)
        else:
            optimizer = torch.optim.Adam([pixels], lr=plan.lr)
            for _ in range(options.iterations):
                optimizer.step(closure)
    except _BudgetSpent:
        pass

    return Result(
        image=best.pixels.cpu(),
        history=history,
        best_iteration=best.record.iteration,
        plan=plan,
        weights_sha256=loaded.sha256,
        weights_source=loaded.source,
        seconds=time.perf_counter() - began,
    )
