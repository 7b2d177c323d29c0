"""Device leasing: one pair task per GPU at a time, pinned to it; one at a time on the CPU.

This is orchestration, so it lives here and hands the engine a device name.
A process has one pool; the flow sizes its task runner to the pool, and each
task holds a lease for exactly as long as it optimises.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class DevicePool:
    def __init__(self, devices: list[str]):
        if not devices:
            raise ValueError("a device pool needs at least one device")
        self.devices = list(devices)
        self._free: queue.Queue[str] = queue.Queue()
        for device in self.devices:
            self._free.put(device)

    @property
    def size(self) -> int:
        return len(self.devices)

    @contextmanager
    def lease(self) -> Iterator[str]:
        device = self._free.get()
        try:
            yield device
        finally:
            self._free.put(device)


def detect(requested: str = "auto", tasks_per_gpu: int = 1) -> list[str]:
    """The devices this host offers for `requested`: every CUDA device for auto/cuda, else that one device."""
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count()) for _ in range(tasks_per_gpu)]
    if requested == "auto":
        return ["cpu"]
    return [requested]


_lock = threading.Lock()
_pool: DevicePool | None = None


def configure(devices: list[str]) -> DevicePool:
    global _pool
    with _lock:
        if _pool is None or _pool.devices != devices:
            _pool = DevicePool(devices)
        return _pool


def pool() -> DevicePool:
    with _lock:
        if _pool is not None:
            return _pool
    return configure(detect())
