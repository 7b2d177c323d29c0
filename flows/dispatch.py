"""Where a run's tasks execute: threads on this host, or a Ray cluster.

Both are Prefect task runners and take tasks the same way; what differs is how a
batch gets its device. On this host the flow names the device and the batch leases
it (a global concurrency limit, see `devices.py`). On Ray each optimise task asks for
one GPU (`num_gpus=1`) and Ray places it on a node with one free; Ray's own resource
accounting is the lease there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque

from stylecore.errors import StyleError

from . import devices as devices_mod
from .manifest import MAX_BATCH_SIZE

BATCHES_PER_DEVICE = 2  # one optimising, the next one read and decoded, waiting for the device


@dataclass
class Dispatch:
    name: str  # local | ray
    task_runner: Any  # a started Prefect task runner
    devices: list[str]  # one entry per device a batch can be given ("auto" on Ray: Ray picks the GPU)
    planning_device: str | None  # the device batches are sized for; None: one the flow cannot see
    device_options: dict = field(default_factory=dict)  # Ray resources an optimise task asks for

    @property
    def window(self) -> int:
        return BATCHES_PER_DEVICE * len(self.devices)

    def submit(self, task, on_device: bool = False, **parameters) -> PrefectFuture:
        placement = nullcontext()
        if on_device and self.device_options:
            from prefect_ray.context import remote_options

            placement = remote_options(**self.device_options)
        if self.name == "local":  # on Ray (a process per task) the batches failed with annotated parameters
            parameters = {name: _untraversed(value) for name, value in parameters.items()}
        with placement:
            return self.task_runner.submit(task, parameters)

    def least_busy(self, busy: list[str]) -> str:
        """The device with the fewest of this run's batches optimising on it or queued for it."""
        return min(dict.fromkeys(self.devices), key=lambda device: busy.count(device) / self.devices.count(device))


def _untraversed(value: Any) -> Any:
    """`value` (or each item of a list), for Prefect to resolve if a future but not to walk through. By default it
    visits every field of every record a task is given: each write task walked its whole batch's results, loss
    histories included, 75 ms with the GIL held for 8 pairs of 300 iterations, while the next batch optimises."""
    return [opaque(item) for item in value] if isinstance(value, list) else opaque(value)


@contextmanager
def dispatch(runner: str, ray_address: str | None = None, devices: list[str] | None = None) -> Iterator[Dispatch]:
    if runner == "ray":
        with _ray(ray_address) as target:
            yield target
        return
    chosen = devices or devices_mod.detect()
    devices_mod.ensure_limits(chosen)
    threads = len(chosen) * BATCHES_PER_DEVICE * (MAX_BATCH_SIZE + 1)  # a window's reads and writes at once
    with ThreadPoolTaskRunner(max_workers=threads) as task_runner:
        yield Dispatch("local", task_runner, chosen, chosen[0])


@contextmanager
def _ray(address: str | None) -> Iterator[Dispatch]:
    try:
        import ray
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise StyleError("runner 'ray' needs the ray extra: pip install 'stylize[ray]'") from None
    address = address or os.environ.get("RAY_ADDRESS")
    with RayTaskRunner(address=address, init_kwargs={"log_to_driver": False}) as task_runner:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            yield Dispatch("ray", task_runner, ["auto"] * gpus, None, {"num_gpus": 1})
        else:  # a CPU cluster: a batch per node at a time, sized for a CPU
            nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
            yield Dispatch("ray", task_runner, ["auto"] * max(1, nodes), "cpu", {"num_cpus": 1})
