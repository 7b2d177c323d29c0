"""One pair's steps, without Prefect: read and fingerprint, decode, and write what it leaves behind.

The Prefect tasks in `tasks.py` call these; keeping them free of Prefect makes each
step testable alone and keeps the tasks thin. Records between the steps are typed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from torch import Tensor

import stylecore
from stylecore import images
from stylecore.engine import Job, Result
from stylecore.errors import StyleError
from stylecore.quality import Quality, assess
from stylecore.weights import sha256_bytes

from . import checkpoints, claims, outputs, storage
from .manifest import PairSpec

OUTPUT_NAMES = {"image": "stylized.png", "losses_csv": "losses.csv", "losses_png": "losses.png", "meta": "meta.json"}


# --- records ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsRef:
    """Which weights a pair uses, without their tensors (those stay in each worker's cache)."""

    sha256: str
    source: str
    preprocessing: str


@dataclass(frozen=True)
class ReadPair:
    """A pair's input bytes and the fingerprint they give."""

    pair: PairSpec
    content: bytes
    styles: tuple[bytes, ...]
    content_sha: str
    style_shas: tuple[str, ...]
    weights: WeightsRef
    fingerprint: str


@dataclass
class PreparedPair:
    """A pair ready for a device: decoded pixels (uint8, a quarter of float32 while it waits) and its identity."""

    pair: PairSpec
    content_sha: str
    style_shas: tuple[str, ...]
    weights: WeightsRef
    fingerprint: str
    content: Tensor  # (1, 3, H, W) uint8 at the output size
    styles: tuple[tuple[Tensor, float], ...]  # (1, 3, h, w) uint8 at the style size, and its blend weight

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the output."""
        return tuple(self.content.shape[-2:])

    def job(self) -> Job:
        return Job(_unit(self.content), [(_unit(style), weight) for style, weight in self.styles])


def _unit(pixels: Tensor) -> Tensor:
    return pixels.float().div_(255.0)


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    device: str
    node: str | None = None  # the Ray node id, on Ray


@dataclass
class OptimisedPair:
    """What the optimise step hands the write step: the result, where and when it was made."""

    prepared: PreparedPair
    result: Result
    worker: Worker
    batch_limit: int
    started_at: str  # ISO 8601 with microseconds, UTC: when the batch's optimisation began and ended
    finished_at: str


@dataclass
class PairOutcome:
    id: str
    status: str  # completed | skipped | failed
    content: str
    style: str
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    final: dict[str, float] | None = None
    quality: Quality | None = None  # completed pairs, and skipped ones whose meta.json has it
    iterations: int = 0
    seconds: float = 0.0  # of the optimisation, shared with the rest of its batch
    device: str | None = None
    batch: int = 1  # pairs optimised together with this one, itself included
    note: str | None = None  # why a pair was skipped, when not because its outputs are already there

    def as_dict(self) -> dict:
        return {**asdict(self), "quality": self.quality.as_record() if self.quality else None}

    @classmethod
    def from_dict(cls, record: dict) -> "PairOutcome":
        """An outcome as a report keeps it."""
        quality = record.get("quality")
        return cls(**{**record, "quality": Quality.from_record(quality) if quality else None})

    @classmethod
    def failed(cls, pair: PairSpec, error: str) -> "PairOutcome":
        return cls(pair.id, "failed", pair.content, pair.style, error=error)


# --- fingerprints ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of the engine's source: any change to how pixels are made re-runs pairs.
    quality.py only judges pixels, so recalibrating a threshold re-runs nothing."""
    digest = hashlib.sha256()
    for path in sorted(Path(stylecore.__file__).parent.glob("*.py")):
        if path.name != "quality.py":
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{_version('stylize')}+{digest.hexdigest()[:12]}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    names = ("stylize", "torch", "torchvision", "prefect", "pillow", "s3fs", "fsspec")
    return {"python": platform.python_version(), **{n: _version(n) for n in names}}


def fingerprint(content_sha: str, style_shas: tuple[str, ...], pair: PairSpec, weights_sha: str) -> str:
    styles = style_shas[0] if not pair.blend else [[sha, weight] for sha, (_, weight) in zip(style_shas, pair.blend)]
    payload = {
        "content": content_sha,
        "style": styles,  # one style: its digest alone, so fingerprints from before blends still match
        "options": pair.options.fingerprint_fields(),
        "weights": weights_sha,
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- the steps --------------------------------------------------------------------------------------


def output_uris(pair: PairSpec) -> dict[str, str]:
    return {key: pair.uri(name) for key, name in OUTPUT_NAMES.items()}


def read_and_fingerprint(pair: PairSpec) -> ReadPair:
    content = storage.read_bytes(pair.content, limit=storage.MAX_IMAGE_BYTES)
    styles = tuple(storage.read_bytes(uri, limit=storage.MAX_IMAGE_BYTES) for uri, _ in pair.styles)
    loaded = outputs.weights_for(pair.options)
    weights = WeightsRef(loaded.sha256, loaded.source, loaded.preprocessing)
    content_sha, style_shas = sha256_bytes(content), tuple(sha256_bytes(data) for data in styles)
    return ReadPair(pair, content, styles, content_sha, style_shas, weights, fingerprint(content_sha, style_shas, pair, weights.sha256))


def finished_before(pair: PairSpec, fingerprint: str) -> PairOutcome | None:
    """The pair's outcome if its meta.json says it was made from these very inputs, options, weights and code."""
    try:
        meta = json.loads(storage.read_bytes(pair.uri(OUTPUT_NAMES["meta"]), limit=storage.MAX_JSON_BYTES))
    except (StyleError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint or meta.get("status") != "completed":
        return None
    quality = meta.get("quality")  # absent from meta.json written before quality flags
    return PairOutcome(
        pair.id, "skipped", pair.content, pair.style, outputs=output_uris(pair), final=meta.get("final"),
        quality=Quality.from_record(quality) if isinstance(quality, dict) else None,
        iterations=meta.get("iterations", 0), device=(meta.get("worker") or {}).get("device"),
    )


def remove_leftovers(pair: PairSpec) -> int:
    """Temporary files a stopped run's writes left in the pair's folder and its snapshots folder: how many."""
    folders = (pair.output, storage.join(pair.output, outputs.SNAPSHOTS))
    return sum(storage.remove_temporaries(folder, within=storage.parent(pair.output)) for folder in folders)


def tidy_finished(pair: PairSpec) -> None:
    """A finished pair's claim and checkpoint removed: right after its meta.json, and again by each run that skips
    it, for a run killed in between left them (two deletes a skipped pair, nothing to list)."""
    claims.release(pair)
    checkpoints.remove(pair)


def decode(read: ReadPair) -> PreparedPair:
    options = read.pair.options
    content = images.load_pixels(read.content, options.size, name=read.pair.content)
    styles = tuple(
        (images.load_pixels(data, options.style_longer_side(), name=uri), weight)
        for data, (uri, weight) in zip(read.styles, read.pair.styles)
    )
    return PreparedPair(read.pair, read.content_sha, read.style_shas, read.weights, read.fingerprint, content, styles)


def this_worker(device: str, node: str | None = None) -> Worker:
    return Worker(socket.gethostname(), os.getpid(), device, node)


def write_outputs(done: OptimisedPair, runner: str) -> PairOutcome:
    """stylized.png, losses.csv, losses.png and any snapshots, then meta.json last: its presence marks the pair done."""
    pair, result = done.prepared.pair, done.result
    uris = output_uris(pair)
    quality = assess(result)
    storage.write_bytes(uris["image"], images.encode_png(result.image))
    storage.write_bytes(uris["losses_csv"], outputs.losses_csv(result.history))
    storage.write_bytes(uris["losses_png"], outputs.losses_png(result.history, f"{pair.id}: losses per iteration"))
    for snapshot in result.snapshots:
        storage.write_bytes(pair.uri(outputs.snapshot_name(snapshot)), images.encode_png(snapshot.pixels))
    storage.write_bytes(uris["meta"], (json.dumps(meta_record(done, runner, quality), indent=2) + "\n").encode())
    tidy_finished(pair)
    return PairOutcome(
        pair.id, "completed", pair.content, pair.style, outputs=uris, final=final_losses(result), quality=quality,
        iterations=len(result.history), seconds=round(result.seconds, 3), device=done.worker.device, batch=result.batch_size,
    )


def final_losses(result: Result) -> dict[str, float]:
    return {k: getattr(result.final, k) for k in ("content", "style", "tv", "total")}


def meta_record(done: OptimisedPair, runner: str, quality: Quality) -> dict:
    prepared, result = done.prepared, done.result
    pair = prepared.pair
    if pair.blend:
        style = {"blend": [{"uri": uri, "sha256": sha, "weight": w} for (uri, w), sha in zip(pair.blend, prepared.style_shas)]}
    else:
        style = {"uri": pair.style, "sha256": prepared.style_shas[0]}
    stops = result.early_stops
    return {
        "id": pair.id,
        "status": "completed",
        "fingerprint": prepared.fingerprint,
        "inputs": {"content": {"uri": pair.content, "sha256": prepared.content_sha}, "style": style},
        "options": pair.options.model_dump(mode="json"),
        "resolved": result.plan.as_dict(),
        "weights": asdict(prepared.weights),
        "versions": dict(versions()),
        "code_version": code_version(),
        "runner": runner,
        "worker": {k: v for k, v in asdict(done.worker).items() if v is not None},
        "size": list(result.image.shape[-2:][::-1]),
        "scales": [list(scale.size) for scale in result.scales],
        "iterations": len(result.history),
        "early_stop": {"stopped_at": stops[-1].iteration, "per_scale": [asdict(s) for s in stops]} if stops else None,
        "batch": {"size": result.batch_size, "limit": done.batch_limit},
        "memory": result.memory_record(),
        "final": final_losses(result),
        "quality": quality.as_record(),
        "seconds": round(result.seconds, 3),
        "resumed_from": result.resumed_from,  # the iteration of the checkpoint this run went on from, or null
        "started_at": done.started_at,
        "finished_at": done.finished_at,
        "outputs": {
            **{k: OUTPUT_NAMES[k] for k in ("image", "losses_csv", "losses_png")},
            **({"snapshots": [outputs.snapshot_name(s) for s in result.snapshots]} if result.snapshots else {}),
        },
    }


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
