"""Devices and their leases: one batch at a time on each device of a host, across every process on it.

A lease is a Prefect global concurrency limit of one slot named after the host and
the device, created on first use. Every flow run on a host (a nightly, an ad-hoc run
and a retry at once, or `serve --limit 2`) asks the same server for the same slot,
so two optimisations never share a GPU, whichever process they run in.
"""

from __future__ import annotations

import contextvars
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.context import ConcurrencyContext
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


HANDOVER_SECONDS = float(os.environ.get("STYLIZE_LEASE_HANDOVER_SECONDS", "30"))


class _DeviceTurns:
    """This process's batches for one device: they take turns here, and only the one whose turn it is deals with
    the server. While more of them wait, the server's lease passes from batch to batch without a round trip (on
    a busy SQLite server one asking takes seconds, longer than a small batch's optimisation), for at most
    `HANDOVER_SECONDS` from its grant; then it goes back to the server, so other runs on the host get a turn."""

    def __init__(self, device: str):
        self.device = device
        self.turn = threading.Lock()
        self.count = threading.Lock()
        self.waiting = 0
        self.holder: threading.Thread | None = None
        self.granted = threading.Event()
        self.give_back = threading.Event()
        self.failure: BaseException | None = None
        self.since = 0.0

    @contextmanager
    def lease(self) -> Iterator[str]:
        with self.count:
            self.waiting += 1
        with self.turn:
            with self.count:
                self.waiting -= 1
            self._hold()
            try:
                yield self.device
            finally:
                with self.count:
                    keep = self.waiting > 0 and time.monotonic() - self.since < HANDOVER_SECONDS
                if not keep:
                    self._let_go()

    def _hold(self) -> None:
        """The server's lease for this device, held by a thread of its own until `_let_go`."""
        if self.holder is not None and self.holder.is_alive():
            return
        self.granted.clear()
        self.give_back.clear()
        self.failure = None
        context = contextvars.copy_context()  # the batch's Prefect settings and run, for the server calls
        self.holder = threading.Thread(target=context.run, args=(self._holding,), name=f"lease {self.device}", daemon=True)
        self.holder.start()
        self.granted.wait()
        if self.failure is not None:
            self.holder.join()
            raise self.failure

    def _holding(self) -> None:
        try:  # a context of the holder's own: the first batch's task run would release the lease when it ends
            with ConcurrencyContext(), concurrency(limit_name(self.device), occupy=1, strict=True, lease_duration=LEASE_SECONDS):
                self.since = time.monotonic()
                self.granted.set()
                self.give_back.wait()
        except BaseException as exc:  # noqa: BLE001 - the batch waiting for the grant raises it
            self.failure = exc
        finally:
            self.granted.set()

    def _let_go(self) -> None:
        """Give the lease back and wait until the server has it, so the next holder's turn begins after ours."""
        self.give_back.set()
        if self.holder is not None:
            self.holder.join()
        self.holder = None


_turns: dict[str, _DeviceTurns] = {}
_turns_guard = threading.Lock()


@contextmanager
def lease(device: str) -> Iterator[str]:
    """Hold `device` of this host for as long as the block runs (its limit exists: see `ensure_limits`)."""
    with _turns_guard:
        turns = _turns.setdefault(device, _DeviceTurns(device))
    with turns.lease():
        yield device
