"""Deciding before optimising: device, precision, loss weights, scales, batch size and the memory plan.

The optimisation loop (`engine.py`) runs what this module decides. Keeping the
decisions here lets an orchestrator ask the same questions the engine will, such
as "how many images of this size fit on that device?", without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import memory
from .errors import BadOptions
from .features import ModelSpec, model_spec
from .options import StyleOptions

MAX_AUTO_BATCH = 8  # a crash costs a whole batch; bench/bench_gpu.py shows where a GPU stops gaining from more

# On a CPU a batch pays only where one image leaves the cores idle between layers. Measured on 2 cores
# (bench/bench_throughput.py): SqueezeNet 1.39-1.45x the pairs per hour, VGG 0.96-1.08x (parity, noise).
CPU_BATCHING_PAYS = {"squeezenet1_1"}


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

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @property
    def deepest(self) -> int:
        """The last layer the losses read: the network is cut after it."""
        return max(self.spec.index_of(layer) for layer in (self.content_layer, *self.style_layers))

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


def precision_choice(precision: str, device: torch.device, model: str) -> tuple[str, str]:
    """The precision to run in and why. `auto` means bf16 where it was measured faster at the same final loss
    (bench/): CUDA with bf16, and VGG on CPUs with native bf16 (AVX512-BF16/AMX)."""
    if precision != "auto":
        return precision, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "CUDA with bf16"
        return "fp32", "this GPU has no bf16"
    if device.type != "cpu":
        return "fp32", f"bf16 is not measured on {device.type}"
    if not model.startswith("vgg"):
        return "fp32", f"{model} is too small for bf16 to pay on a CPU"
    if cpu_supports_bf16():
        return "bf16", "this CPU has native bf16 (AVX512-BF16 or AMX)"
    return "fp32", "this CPU has no native bf16 (no AVX512-BF16 or AMX): expect 3-5x slower than one with it"


def resolve_precision(precision: str, device: torch.device, model: str) -> str:
    return precision_choice(precision, device, model)[0]


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
    style_weights = tuple(w * options.style_strength for w in style_weights)
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
    return memory.estimate(plan.spec, plan.deepest, height, width, options.optimizer, plan.dtype)


def auto_batch_size(options: StyleOptions, height: int, width: int, device: str, budget: int | None = None) -> int:
    """As many images as the memory estimate fits on `device` (in `budget` bytes, default what it has free), at
    most MAX_AUTO_BATCH; on a CPU, batches only for the models measured faster batched there."""
    torch_device = resolve_device(device)
    if torch_device.type == "cpu" and options.model not in CPU_BATCHING_PAYS:
        return 1
    cost = memory_estimate(options, height, width, torch_device)
    return memory.largest_batch(cost, budget or memory.device_budget(torch_device), MAX_AUTO_BATCH)


def needs_tiles(plan: Plan, optimizer: str, height: int, width: int, budget: int) -> bool:
    return memory.estimate(plan.spec, plan.deepest, height, width, optimizer, plan.dtype).total(1) > budget


@dataclass(frozen=True)
class ScaleSizes:
    sizes: list[tuple[int, int]]  # (height, width), coarse to fine
    note: str | None = None  # why coarser scales were added, for the memory record


def sizes_to_fit(options: StyleOptions, plan: Plan, height: int, width: int, budget: int) -> ScaleSizes:
    """The scales asked for; when the output must be tiled and no coarser scale was asked for, add coarser ones
    until one fits whole, so the tiled scale starts from a converged image instead of from scratch."""
    sizes = scale_sizes(height, width, options.scales)
    tiled = options.tile is not None or needs_tiles(plan, options.optimizer, height, width, budget)
    if not tiled or len(sizes) > 1:
        return ScaleSizes(sizes)
    ladder = scale_sizes(height, width, 6)  # every size scale_sizes allows, the output last
    start = next((i for i in range(len(ladder) - 2, -1, -1) if not needs_tiles(plan, options.optimizer, *ladder[i], budget)), 0)
    if start == len(ladder) - 1:
        return ScaleSizes(sizes)
    coarsest = ladder[start]
    return ScaleSizes(
        ladder[start:], f"{width}×{height} does not fit whole: started at {coarsest[1]}×{coarsest[0]}, tiled the output"
    )
