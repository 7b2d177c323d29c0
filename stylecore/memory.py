"""How much memory an optimisation needs, estimated before it runs, and how much a device can give.

The estimate counts what dominates: the network's weights; every activation kept
for the backward pass (found by running the network on the meta device, so no
memory or time is spent); and the optimiser's copies of the image (L-BFGS keeps
two per remembered step). `ACTIVATION_OVERHEAD` folds in what the count leaves
out (fp32 copies of tapped layers, Gram products, gradient buffers, allocator
slack); it was measured on this CPU (bench/bench_memory.py) and errs high.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from .features import ModelSpec, model_spec

ACTIVATION_OVERHEAD = 2.0
LBFGS_HISTORY = 50
_OPTIMISER_COPIES = {"lbfgs": 2 * LBFGS_HISTORY + 6, "adam": 6}  # per image, beyond the image itself
DEVICE_FRACTION = 0.85  # of what the device reports free: room for fragmentation and other tenants
MIN_TILE = 128
FIXED_OVERHEAD = 512 << 20  # kernels, primitive caches, allocator slack: measured 0.3-0.45 GiB on the CPU


def activation_elements(spec: ModelSpec, deepest: int, height: int, width: int) -> int:
    """Elements of every module output up to layer `deepest` for one (3, height, width) image."""
    return _activation_elements(spec.name, deepest, height, width)


@lru_cache(maxsize=256)
def _activation_elements(model: str, deepest: int, height: int, width: int) -> int:
    with torch.device("meta"):
        body = model_spec(model).build()[: deepest + 1]
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    hooks = [m.register_forward_hook(count) for m in body.modules() if m is not body]
    try:
        with torch.no_grad():
            body(torch.empty(1, 3, height, width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def weight_elements(spec: ModelSpec, deepest: int) -> int:
    return _weight_elements(spec.name, deepest)


@lru_cache(maxsize=64)
def _weight_elements(model: str, deepest: int) -> int:
    with torch.device("meta"):
        body: nn.Module = model_spec(model).build()[: deepest + 1]
    return sum(p.numel() for p in body.parameters())


@dataclass(frozen=True)
class Estimate:
    fixed: int  # weights and style targets: paid once whatever the batch
    per_image: int  # activations and optimiser state of one image

    def total(self, batch: int = 1) -> int:
        return self.fixed + batch * self.per_image


def estimate(
    spec: ModelSpec, deepest: int, height: int, width: int, optimizer: str, dtype: torch.dtype, image_pixels: int | None = None
) -> Estimate:
    """Peak bytes to optimise a (height, width) image, or a tile of that size of an image of `image_pixels`."""
    act_bytes = torch.finfo(dtype).bits // 8
    activations = activation_elements(spec, deepest, height, width) * act_bytes * ACTIVATION_OVERHEAD
    image = 3 * (image_pixels or height * width) * 4
    per_image = int(activations + image * (1 + _OPTIMISER_COPIES[optimizer]))
    return Estimate(fixed=weight_elements(spec, deepest) * act_bytes + FIXED_OVERHEAD, per_image=per_image)


def _cgroup_free() -> int | None:
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - used


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_budget(device: torch.device) -> int:
    """Bytes this process may plan to use on `device` now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + cached) * DEVICE_FRACTION)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() * DEVICE_FRACTION)
    candidates = [v for v in (_meminfo_available(), _cgroup_free()) if v]
    return int(min(candidates) * DEVICE_FRACTION) if candidates else 8 << 30


def largest_batch(cost: Estimate, budget: int, wanted: int) -> int:
    """As many images as fit, at least one (an image that does not fit alone is tiled instead)."""
    return max(1, min(wanted, (budget - cost.fixed) // max(cost.per_image, 1)))


def largest_tile(spec: ModelSpec, deepest: int, height: int, width: int, dtype: torch.dtype, budget: int) -> int:
    """The largest tile side whose worst-case piece fits `budget` with Adam (the tiled optimiser); the whole
    image's longer side when it fits in one piece."""
    if estimate(spec, deepest, height, width, "adam", dtype).total() <= budget:
        return max(height, width)
    tile = (max(height, width) // 64) * 64
    while tile > MIN_TILE:
        piece = min(height, tile * 3 // 2), min(width, tile * 3 // 2)  # a piece can be 1.5 tiles (slivers merge)
        if estimate(spec, deepest, *piece, "adam", dtype, image_pixels=height * width).total() <= budget:
            return tile
        tile -= 64
    return MIN_TILE
