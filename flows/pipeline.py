"""The Prefect flows: a manifest run, and a re-run of a report's failed pairs.

Thin orchestration around stylecore: a task per pair (the unit of retry and of
what an operator sees), device leases, fingerprints for resume, and the report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.runtime import flow_run, task_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

import stylecore
import stylecore.weights
from stylecore import images
from stylecore.engine import Job, planned_iterations
from stylecore.errors import StyleError

from . import batching as batching_mod, devices, outputs, report as report_mod, storage
from .batching import group_key
from .progress import ProgressReporter, artifact_key
from .manifest import MAX_BATCH_SIZE, BadManifest, LoadedManifest, PairSpec, load as load_manifest, slug


# --- fingerprints ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of the engine's source: any change to how pixels are made re-runs pairs."""
    digest = hashlib.sha256()
    for path in sorted(Path(stylecore.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{_version('stylize')}+{digest.hexdigest()[:12]}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def fingerprint(content_sha: str, style_shas: list[str], pair: PairSpec, weights_sha: str) -> str:
    styles = style_shas[0] if not pair.blend else [[sha, weight] for sha, (_, weight) in zip(style_shas, pair.blend)]
    payload = {
        "content": content_sha,
        "style": styles,  # one style: its digest alone, so fingerprints from before blends still match
        "options": pair.options.fingerprint_fields(),
        "weights": weights_sha,
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    names = ("stylize", "torch", "torchvision", "prefect", "pillow", "s3fs", "fsspec")
    return {"python": platform.python_version(), **{n: _version(n) for n in names}}


# --- one pair ------------------------------------------------------------------------------------


@dataclass
class PairOutcome:
    id: str
    status: str  # completed | skipped | failed
    content: str
    style: str
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    final: dict[str, float] | None = None
    iterations: int = 0
    seconds: float = 0.0  # of the optimisation, shared with the rest of its batch
    device: str | None = None
    batch: int = 1  # pairs optimised together with this one, itself included

    def as_dict(self) -> dict:
        return asdict(self)


OUTPUT_NAMES = {"image": "stylized.png", "losses_csv": "losses.csv", "losses_png": "losses.png", "meta": "meta.json"}


def output_uris(pair: PairSpec) -> dict[str, str]:
    return {key: pair.uri(name) for key, name in OUTPUT_NAMES.items()}


def _read_meta(uri: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except (StyleError, ValueError):
        return None


@dataclass(frozen=True)
class Batching:
    """How a pair's optimisation may be batched: its planned group (None: alone, at once) and the batch limit."""

    group: str | None = None
    size: int | str = "auto"  # a number, or auto (from the memory estimate)
    memory_limit: int | None = None  # bytes per device to plan for; None: what the device has free


def run_pair(pair: PairSpec, runner: str, logger, batching: Batching = Batching()) -> PairOutcome:
    """Read, skip if done, optimise (batched with its group), write: the body of the pair task."""
    uris = output_uris(pair)
    group_left = batching.group is not None
    try:
        content_bytes = storage.read_bytes(pair.content)
        style_bytes = [storage.read_bytes(uri) for uri, _ in pair.styles]
        loaded_weights = outputs.weights_for(pair.options)
        content_sha = stylecore.weights.sha256_bytes(content_bytes)
        style_shas = [stylecore.weights.sha256_bytes(data) for data in style_bytes]
        fp = fingerprint(content_sha, style_shas, pair, loaded_weights.sha256)

        previous = _read_meta(uris["meta"])
        if previous and previous.get("fingerprint") == fp and previous.get("status") == "completed":
            logger.info("%s: unchanged since %s, skipped", pair.id, previous.get("finished_at"))
            return PairOutcome(
                pair.id, "skipped", pair.content, pair.style, outputs=uris, final=previous.get("final"),
                iterations=previous.get("iterations", 0), device=previous.get("worker", {}).get("device"),
            )

        if storage.remove_temporaries(pair.output):
            logger.info("%s: removed temporary files a stopped run left behind", pair.id)
        options = pair.options
        content = images.load(content_bytes, options.size, name=pair.content)
        styles = [
            (images.load(data, options.style_longer_side(), name=uri), weight)
            for data, (uri, weight) in zip(style_bytes, pair.styles)
        ]
        height, width = content.shape[-2:]
        limit = batching.size if isinstance(batching.size, int) else batch_size_for(options, height, width)
        reporter = ProgressReporter(pair.id, planned_iterations(options, height, width), logger)
        group = batching.group if batching.group == group_key(height, width, options) else None
        if batching.group and group is None:  # the header misled the plan: run alone, and let the group go on
            batching_mod.batcher().withdraw(batching.group)
        group_left = False
        result = batching_mod.batcher().run(
            group, Job(content, styles), options, limit, on_iteration=reporter, weights=loaded_weights,
            memory_limit=batching.memory_limit,
        )
    finally:
        if group_left:  # this planned member will never arrive: its group need not wait for it
            batching_mod.batcher().withdraw(batching.group)
    final = {k: getattr(result.final, k) for k in ("content", "style", "tv", "total")}
    together = result.extra.get("batch_size", 1)
    logger.info(
        "%s: optimised on %s%s in %.1fs", pair.id, result.plan.device,
        f" in a batch of {together}" if together > 1 else "", result.seconds,
    )
    for note in result.extra.get("memory", {}).get("fallbacks", []):
        logger.warning("%s: %s", pair.id, note)

    storage.write_bytes(uris["image"], images.encode_png(result.image))
    storage.write_bytes(uris["losses_csv"], outputs.losses_csv(result.history))
    storage.write_bytes(uris["losses_png"], outputs.losses_png(result.history, f"{pair.id}: losses per iteration"))
    if pair.blend:
        style_inputs = {"blend": [{"uri": uri, "sha256": sha, "weight": w} for (uri, w), sha in zip(pair.blend, style_shas)]}
    else:
        style_inputs = {"uri": pair.style, "sha256": style_shas[0]}
    stopped = result.extra.get("early_stop") or []
    meta = {
        "id": pair.id,
        "status": "completed",
        "fingerprint": fp,
        "inputs": {"content": {"uri": pair.content, "sha256": content_sha}, "style": style_inputs},
        "options": pair.options.model_dump(mode="json"),
        "resolved": result.plan.as_dict(),
        "weights": {"sha256": loaded_weights.sha256, "source": loaded_weights.source, "preprocessing": loaded_weights.preprocessing},
        "versions": dict(versions()),
        "code_version": code_version(),
        "runner": runner,
        "worker": {"host": socket.gethostname(), "pid": os.getpid(), "device": str(result.plan.device)},
        "size": list(result.image.shape[-2:][::-1]),
        "scales": result.extra.get("scales"),
        "iterations": len(result.history),
        "early_stop": {"stopped_at": stopped[-1]["iteration"], "per_scale": stopped} if stopped else None,
        "batch": {"size": result.extra.get("batch_size", 1), "limit": limit},
        "memory": result.extra.get("memory"),
        "final": final,
        "seconds": round(result.seconds, 3),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "outputs": {k: OUTPUT_NAMES[k] for k in ("image", "losses_csv", "losses_png")},
    }
    storage.write_bytes(uris["meta"], (json.dumps(meta, indent=2) + "\n").encode())  # last: marks the pair done
    reporter.done()
    return PairOutcome(
        pair.id, "completed", pair.content, pair.style, outputs=uris, final=final,
        iterations=len(result.history), seconds=round(result.seconds, 3), device=str(result.plan.device),
        batch=result.extra.get("batch_size", 1),
    )


def batch_size_for(options, height: int, width: int) -> int:
    return batching_mod.auto_batch_size(options, height, width, devices.pool().devices[0])


# Pair tasks in flight per device: two of the largest batches, so the next one reads its inputs while one runs.
PAIR_THREADS = 2 * MAX_BATCH_SIZE

BAD_INPUT = "Bad input"  # the state name of a deterministic failure: never retried


def _retry_unless_bad_input(task, task_run, state) -> bool:
    return state.name != BAD_INPUT


@task(
    name="stylize-pair",
    task_run_name="{pair.id}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_retry_unless_bad_input,
)
def stylize_pair(pair: PairSpec, runner: str = "local", retries: int = 0, batching: Batching = Batching()) -> dict:
    """Deterministic failures end the task at once as 'Bad input'; transient ones are raised for Prefect to retry,
    and on the last attempt end it with one line instead of a traceback."""
    logger = get_run_logger()
    if (task_run.run_count or 1) > 1:
        batching = replace(batching, group=None)  # a retry runs alone: its group has gone on without it
    try:
        return run_pair(pair, runner, logger, batching).as_dict()
    except StyleError as exc:
        logger.error("%s: %s", pair.id, exc)
        return Failed(name=BAD_INPUT, message=f"{exc}")
    except Exception as exc:
        attempt = task_run.run_count or 1
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if attempt > retries:
            logger.error("%s: %s (gave up after %d attempt%s)", pair.id, reason, attempt, "s" * (attempt > 1))
            return Failed(message=f"{reason} (after {attempt} attempt{'s' * (attempt > 1)})")
        logger.warning("%s: %s (attempt %d of %d, will retry)", pair.id, reason, attempt, retries + 1)
        logger.debug("%s: traceback of attempt %d", pair.id, attempt, exc_info=True)
        raise


# --- a run -----------------------------------------------------------------------------------------


def _run_name() -> str:
    parameters = flow_run.parameters or {}
    source = parameters.get("manifest") or parameters.get("report") or "run"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    label = Path(str(source).rstrip("/")).stem
    if label == "report":  # …/_runs/<run>/report.json → name the retry after the run it retries
        label = Path(str(source)).parent.name.split("-2")[0] + "-retry"
    return f"{slug(label) or 'run'}-{stamp}"


def run_pairs(loaded: LoadedManifest, pairs: list[PairSpec], runner: str, extra_failures: list[PairOutcome] = ()) -> dict:
    """Fan the pairs out, gather outcomes whatever happened to each, write the report and the artifacts."""
    logger = get_run_logger()
    began = time.perf_counter()
    retries = loaded.manifest.retries
    task = stylize_pair.with_options(retries=retries, retry_delay_seconds=loaded.manifest.retry_delay_seconds)
    logger.info("%d pairs from %s → %s", len(pairs), loaded.uri, loaded.output)
    groups = plan_groups(pairs, loaded.manifest.batch_size, runner)
    batched = [n for group, n in Counter(groups.values()).items() if group is not None and n > 1]
    if batched:
        logger.info(
            "%d pairs in %d group%s of one output size and options, to batch (batch size %s)",
            sum(batched), len(batched), "s" * (len(batched) > 1), loaded.manifest.batch_size,
        )
    memory_limit = int(loaded.manifest.memory_limit_gb * 2**30) if loaded.manifest.memory_limit_gb else None
    order = sorted(range(len(pairs)), key=_group_order(pairs, groups))  # a group's pairs are submitted together
    batching_mod.batcher().expect([groups[pairs[i].id] for i in order if groups[pairs[i].id]])
    with _placement(runner):
        submitted = {
            i: task.submit(
                pairs[i], runner=runner, retries=retries,
                batching=Batching(groups[pairs[i].id], loaded.manifest.batch_size, memory_limit),
            )
            for i in order
        }
    futures = [submitted[i] for i in range(len(pairs))]
    wait(futures)
    outcomes = list(extra_failures)
    for pair, future in zip(pairs, futures):
        state = future.state
        if state.is_completed():
            outcomes.append(PairOutcome(**future.result()))
        else:
            outcomes.append(PairOutcome(pair.id, "failed", pair.content, pair.style, error=state.message or state.name))
    return write_report(loaded, outcomes, time.perf_counter() - began)


def plan_groups(pairs: list[PairSpec], batch_size: int | str, runner: str) -> dict[str, str | None]:
    """Each pair's batch group, from its content's header (one small read each, in parallel); None runs alone.

    On Ray every pair is a task in a process of its own, so there is nothing to share a batch with."""
    if batch_size == 1 or runner == "ray" or len(pairs) < 2:
        return {pair.id: None for pair in pairs}

    def key(pair: PairSpec) -> str | None:
        try:
            size = images.peek_size(storage.read_head(pair.content))
        except Exception:  # unreadable now: the pair task reports it properly
            return None
        return group_key(*images.scaled_size(*size, pair.options.size)[::-1], pair.options) if size else None

    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="stylize-plan") as pool:
        return dict(zip((p.id for p in pairs), pool.map(key, pairs)))


def _group_order(pairs: list[PairSpec], groups: dict[str, str | None]):
    first: dict[str | None, int] = {}
    for index, pair in enumerate(pairs):
        first.setdefault(groups[pair.id], index)
    return lambda i: (first[groups[pairs[i].id]] if groups[pairs[i].id] else i, i)


def _placement(runner: str):
    """On Ray, each pair task asks for one GPU where the cluster has GPUs, else for one CPU."""
    if runner != "ray":
        return contextlib.nullcontext()
    import ray
    from prefect_ray.context import remote_options

    gpus = ray.cluster_resources().get("GPU", 0)
    return remote_options(num_gpus=1) if gpus else remote_options(num_cpus=1)


@task(name="store-report", task_run_name="store-report", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[2, 10])
def store_report(report: dict, sheet: bytes) -> None:
    """A task of its own, so a storage hiccup at the very end is retried like any pair's; report.json first."""
    storage.write_bytes(report["report"], report_mod.to_json(report))
    storage.write_bytes(report["contact_sheet"], sheet)


def write_report(loaded: LoadedManifest, outcomes: list[PairOutcome], seconds: float) -> dict:
    name = flow_run.name or _run_name()
    folder = storage.join(loaded.output, "_runs", name)
    pairs = [o.as_dict() for o in outcomes]
    report = {
        "run_name": name,
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "manifest": loaded.uri,
        "output": loaded.output,
        "report": storage.join(folder, "report.json"),
        "contact_sheet": storage.join(folder, "contact_sheet.png"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "counts": report_mod.summary_counts(pairs),
        "device_seconds": report_mod.gpu_seconds_by_device(pairs),
        "pairs": pairs,
    }
    sheet = report_mod.contact_sheet(pairs)  # built once: it reads every pair's thumbnails
    try:
        store_report(report, sheet)
    except Exception as exc:  # the storage is down for longer than the retries: keep the report here
        fallback = Path(stylecore.weights.cache_dir()) / "reports" / name
        get_run_logger().error(
            "%s: could not write the report to %s (%s); kept it at %s", name, folder, f"{type(exc).__name__}: {exc}", fallback
        )
        report["report"], report["contact_sheet"] = str(fallback / "report.json"), str(fallback / "contact_sheet.png")
        store_report(report, sheet)
    create_table_artifact(report_mod.table_rows(report), key=artifact_key(loaded.name, "summary"), description=f"Pairs of {name}")
    create_markdown_artifact(report_mod.markdown(report), key=artifact_key(loaded.name, "report"), description=f"Report of {name}")
    counts = report["counts"]
    get_run_logger().info(
        "%s: %d completed, %d skipped, %d failed; report %s", name, counts["completed"], counts["skipped"], counts["failed"], report["report"]
    )
    return report


def _finish(report: dict):
    failed = [p["id"] for p in report["pairs"] if p["status"] == "failed"]
    if failed:
        shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        return Failed(message=f"{len(failed)} of {len(report['pairs'])} pairs failed: {shown}", data=report)
    return Completed(message=f"{len(report['pairs'])} pairs done", data=report)


@flow(name="stylize-manifest", flow_run_name=_run_name, persist_result=False, validate_parameters=True, task_runner=ThreadPoolTaskRunner(max_workers=PAIR_THREADS))
def stylize_manifest(manifest: str, output: str | None = None, runner: str = "local"):
    """Stylise every pair of a manifest; pairs already done with the same fingerprint are skipped."""
    try:
        loaded = load_manifest(manifest, output)
    except BadManifest as exc:
        get_run_logger().error("manifest %s is not valid:\n%s", manifest, exc)
        return Failed(name=BAD_INPUT, message=f"manifest {manifest} is not valid: {len(exc.problems)} problem(s)")
    return _finish(run_pairs(loaded, loaded.pairs, runner))


@flow(name="stylize-retry-failed", flow_run_name=_run_name, persist_result=False, task_runner=ThreadPoolTaskRunner(max_workers=PAIR_THREADS))
def retry_failed(report: str, runner: str = "local"):
    """Re-run exactly the failed pairs of a report (inputs re-read, so fixed files are picked up)."""
    previous = json.loads(storage.read_bytes(report))
    failed_ids = [p["id"] for p in previous["pairs"] if p["status"] == "failed"]
    loaded = load_manifest(previous["manifest"], previous["output"])
    by_id = {p.id: p for p in loaded.pairs}
    pairs = [by_id[i] for i in failed_ids if i in by_id]
    gone = [
        PairOutcome(p["id"], "failed", p["content"], p["style"], error="no longer in the manifest")
        for p in previous["pairs"]
        if p["status"] == "failed" and p["id"] not in by_id
    ]
    get_run_logger().info("retrying %d failed pairs of %s", len(pairs), report)
    return _finish(run_pairs(loaded, pairs, runner, gone))
