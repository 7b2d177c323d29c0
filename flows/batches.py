"""Batches planned before any pixel is decoded: pairs of one output size and options, as many as fit.

The flow reads each content's header (one small ranged read, in parallel), groups the
pairs whose outputs will have one size and one set of options, and cuts each group
into batches of the size the target device's memory estimate allows. A batch is then
the unit of GPU work on every runner. A header that misleads (the decoded size differs)
costs nothing but batching: the optimise step runs such a pair in a batch of its own.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from stylecore import images
from stylecore.options import StyleOptions
from stylecore.planning import MAX_AUTO_BATCH, auto_batch_size

from . import storage
from .manifest import PairSpec

HEADER_READERS = 16  # ranged reads at once while planning; S3 latency, not bandwidth, is what they hide


@dataclass(frozen=True)
class BatchPlan:
    number: int  # 1-based, in the order batches are dispatched
    pairs: tuple[PairSpec, ...]
    limit: int  # the batch size planned for this group (the batch may hold fewer: the group's remainder)
    size: tuple[int, int] | None  # (width, height) the headers promise; None: a header that said nothing usable

    @property
    def label(self) -> str:
        where = f"{self.size[0]}×{self.size[1]}" if self.size else "size unknown"
        return f"batch {self.number}: {len(self.pairs)} pair{'s' * (len(self.pairs) > 1)}, {where}"


def group_key(height: int, width: int, options: StyleOptions) -> str:
    """Pairs with one key can share a batch: one output size, one set of options (device included)."""
    digest = hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:12]
    return f"{width}x{height}-{digest}"


def output_size(pair: PairSpec) -> tuple[int, int] | None:
    """(width, height) of the pair's output, from its content's header; None where it cannot be told."""
    try:
        size = images.peek_size(storage.read_head(pair.content))
    except Exception:  # unreadable now: the pair's own read step reports it properly
        return None
    return images.scaled_size(*size, pair.options.size) if size else None


def batch_limit(batch_size: int | str, options: StyleOptions, size: tuple[int, int], device: str | None, memory_limit: int | None) -> int:
    """An explicit batch size, or what fits on `device`. A device the flow cannot see (a Ray cluster's GPU)
    gets the largest auto batch; the engine there cuts it to what its memory holds."""
    if isinstance(batch_size, int):
        return batch_size
    if device is None:
        return MAX_AUTO_BATCH
    width, height = size
    return auto_batch_size(options, height, width, device, memory_limit)


def plan_batches(
    pairs: list[PairSpec], batch_size: int | str, device: str | None, memory_limit: int | None = None
) -> list[BatchPlan]:
    """Batches in the order of each group's first pair; pairs whose size is unknown run alone."""
    with ThreadPoolExecutor(max_workers=HEADER_READERS, thread_name_prefix="stylize-plan") as pool:
        sizes = list(pool.map(output_size, pairs)) if batch_size != 1 else [None] * len(pairs)
    groups: dict[str, list[PairSpec]] = {}
    limits: dict[str, tuple[int, tuple[int, int] | None]] = {}
    for index, (pair, size) in enumerate(zip(pairs, sizes)):
        key = group_key(size[1], size[0], pair.options) if size else f"alone-{index}"
        if key not in groups:
            limit = batch_limit(batch_size, pair.options, size, device, memory_limit) if size else 1
            groups[key], limits[key] = [], (limit, size)
        groups[key].append(pair)
    plans: list[BatchPlan] = []
    for key, members in groups.items():
        limit, size = limits[key]
        for start in range(0, len(members), limit):
            plans.append(BatchPlan(len(plans) + 1, tuple(members[start : start + limit]), limit, size))
    return plans
