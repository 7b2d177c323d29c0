"""Devices and their leases: one batch at a time on each device of a host, across every process on it.

A lease is a Prefect global concurrency limit of one slot named after the host and
the device, created on first use. Every flow run on a host (a nightly, an ad-hoc run
and a retry at once, or `serve --limit 2`) asks the same server for the same slot,
so two optimisations never share a GPU, whichever process they run in.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LEASE_SECONDS = 300  # renewed while held; a killed holder's slot frees itself after this long


def detect(requested: str = "auto") -> list[str]:
    """The devices this host offers for `requested`: every CUDA device for auto/cuda, else that one device."""
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if requested == "auto":
        return ["cpu"]
    return [requested]


def limit_name(device: str, host: str | None = None) -> str:
    """The concurrency limit that stands for one device of one host, e.g. stylize-device-gpu7-cuda-0."""
    host = host or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"stylize-device-{host}-{device}")


def ensure_limits(devices: list[str]) -> None:
    """Create each device's one-slot limit unless it exists; the flow does this once, before its batches lease."""
    with get_client(sync_client=True) as client:
        for name in {limit_name(device) for device in devices}:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                except ObjectAlreadyExists:  # another run on this host created it meanwhile
                    pass


_queues: dict[str, threading.Lock] = {}
_queues_guard = threading.Lock()


def _queue(device: str) -> threading.Lock:
    with _queues_guard:
        return _queues.setdefault(device, threading.Lock())


@contextmanager
def lease(device: str) -> Iterator[str]:
    """Hold `device` of this host for as long as the block runs (its limit exists: see `ensure_limits`).

    This process's batches first queue for the device among themselves, so only the one at the front asks the
    server: a request the server turns down is told to poll again seconds later, and the device would idle."""
    with _queue(device), concurrency(limit_name(device), occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield device
