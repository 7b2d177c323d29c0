"""Faults lose nothing: SIGKILL at random points, then a re-run; no secret ever leaks into what a run leaves."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from flows import checkpoints, devices, storage

from .conftest import ROOT
from .test_pipeline import put, run_cli, small_png

pytestmark = pytest.mark.slow

PAIRS = ["tubingen-starry_night", "tubingen-the_scream", "composition_vii-starry_night", "composition_vii-the_scream"]


def make_job(folder: Path, weights: Path, output: str = "out", settings: str = "", defaults: str = "") -> Path:
    (folder / "c").mkdir(parents=True, exist_ok=True)
    (folder / "s").mkdir(exist_ok=True)
    (folder / "c" / "tubingen.png").write_bytes(small_png("tubingen.jpg"))
    (folder / "c" / "composition_vii.png").write_bytes(small_png("composition_vii.jpg"))
    (folder / "s" / "starry_night.png").write_bytes(small_png("starry_night.jpg"))
    (folder / "s" / "the_scream.png").write_bytes(small_png("the_scream.jpg"))
    manifest = folder / "job.yaml"
    manifest.write_text(
        f"output: {output}\n{settings}defaults: {{model: squeezenet1_1, weights: {weights}, size: 64, iterations: 40{defaults}}}\n"
        "pairs:\n  - {content: 'c/*.png', style: 's/*.png'}\n"
    )
    return manifest


def loss_columns(path: Path) -> list[list[str]]:
    """losses.csv without its wall-clock column: the part that must be reproducible."""
    return [row[:-1] for row in csv.reader(open(path))]


def assert_nothing_half_written(out: Path) -> None:
    for pair_dir in (p for p in out.iterdir() if p.is_dir() and p.name != "_runs"):
        for path in pair_dir.iterdir():
            assert not path.name.startswith("."), f"temporary file {path} visible after the re-run"
        if (pair_dir / "stylized.png").exists():
            Image.open(pair_dir / "stylized.png").load()  # complete, or it would not decode
        if (pair_dir / "meta.json").exists():
            meta = json.loads((pair_dir / "meta.json").read_text())
            for name in ("stylized.png", "losses.csv", "losses.png"):
                assert (pair_dir / name).exists(), f"{pair_dir.name}: meta.json says done but {name} is missing"
            assert meta["status"] == "completed"


def checkpoint_files(out: str) -> dict[str, str]:
    """Every pair's checkpoint under `out` (local or S3), each with a token that changes when it is rewritten."""
    fs = storage.filesystem(out)
    fs.invalidate_cache()
    pattern = storage.join(out, "*", checkpoints.CHECKPOINT_NAME).split("://", 1)[-1]
    return {path: str(info.get("ETag") or info.get("mtime")) for path, info in fs.glob(pattern, detail=True).items()}


def free_device_leases() -> None:
    """A SIGKILLed run's device lease frees itself after devices.LEASE_SECONDS; end it now, as that expiry
    would, so the next run optimises at once instead of waiting minutes."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for device in devices.detect():
            try:
                client.delete_global_concurrency_limit_by_name(devices.limit_name(device))
            except ObjectNotFound:
                pass


def killed_then_resumed(
    tmp_path: Path, weights: Path, kills: int, earliest: float, seed: int, settings: str = "", defaults: str = "",
    at_checkpoints: int = 0, output: str = "out",
) -> tuple[str, Path, set[str]]:
    """An uninterrupted reference run; then the same job SIGKILLed `kills` times: the first `at_checkpoints`
    kills as soon as a checkpoint is written, mid-optimisation, the others at random points (from `earliest`
    of the reference's duration); then run to the end. Returns (its output, the reference's, the pairs that
    held a checkpoint when a run was killed: each must have resumed from it)."""
    reference = make_job(tmp_path / "reference", weights, settings=settings, defaults=defaults)
    began = time.monotonic()
    code, _, err = run_cli("run", str(reference))
    assert code == 0, err[-2000:]
    duration = time.monotonic() - began

    job = make_job(tmp_path / "killed", weights, output=output, settings=settings, defaults=defaults)
    out = output if "://" in output else str(tmp_path / "killed" / output)
    rng = random.Random(seed)
    resumable: set[str] = set()
    for kill in range(kills):
        before = checkpoint_files(out)
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", str(job)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        if kill < at_checkpoints:
            deadline = time.monotonic() + 300
            while checkpoint_files(out).items() <= before.items() and process.poll() is None:
                assert time.monotonic() < deadline, "no checkpoint was written"
                time.sleep(0.02)
            assert process.poll() is None, "the run ended before it wrote a checkpoint"
        else:
            time.sleep(rng.uniform(earliest * duration, 1.0 * duration))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        resumable |= {path.split("/")[-2] for path in checkpoint_files(out)}
        free_device_leases()
        if "://" not in out and Path(out).exists():
            for pair_dir in Path(out).iterdir():  # a killed run may leave hidden temporaries, never a partial final file
                if (pair_dir / "stylized.png").exists():
                    Image.open(pair_dir / "stylized.png").load()
    code, _, err = run_cli("run", str(job))
    assert code == 0, err[-2000:]
    if "://" not in out:
        assert_nothing_half_written(Path(out))
    assert not checkpoint_files(out)  # every pair's meta.json is written: its checkpoint is gone
    return out, tmp_path / "reference" / "out", resumable


def assert_resumed(meta: dict, pair: str, resumable: set[str], iterations: int = 40) -> None:
    """meta.json says from which iteration the pair went on: a pair killed holding a checkpoint went on from one."""
    assert "resumed_from" in meta
    if pair in resumable:
        assert isinstance(meta["resumed_from"], int) and 0 < meta["resumed_from"] < iterations, (pair, meta["resumed_from"])


def test_sigkill_at_ten_random_points_loses_nothing(tmp_path, prefect_api, squeezenet_weights):
    # One pair per batch: byte-identity with an uninterrupted run is the sharpest check that nothing of a
    # killed run leaks into a final file, and a batched pair's bytes depend on its batch-mates by float
    # rounding (a resumed run batches what is left). The next test kills a batched run. The first three kills
    # come as a checkpoint is written: those pairs go on from their checkpoints, to the same bytes.
    out, reference, resumable = killed_then_resumed(
        tmp_path, squeezenet_weights, kills=10, earliest=0.3, seed=20261127, settings="batch_size: 1\n",
        defaults=", checkpoint_every: 5", at_checkpoints=3,
    )
    assert resumable
    for pair in PAIRS:
        done, ref = Path(out) / pair, reference / pair
        assert (done / "stylized.png").read_bytes() == (ref / "stylized.png").read_bytes(), pair
        assert loss_columns(done / "losses.csv") == loss_columns(ref / "losses.csv"), pair
        assert_resumed(json.loads((done / "meta.json").read_text()), pair, resumable)


def test_a_killed_batched_run_on_s3_resumes_to_the_same_pictures(tmp_path, s3_bucket, prefect_api, squeezenet_weights):
    """Batched (the default for SqueezeNet), checkpoints on S3: a resumed run batches what is left, so pictures
    match to float rounding, not to the byte."""
    import numpy as np

    out, reference, resumable = killed_then_resumed(
        tmp_path, squeezenet_weights, kills=3, earliest=0.5, seed=27, defaults=", checkpoint_every: 5", at_checkpoints=2,
        output=f"s3://{s3_bucket}/out",
    )
    assert resumable
    for pair in PAIRS:
        done, ref = storage.join(out, pair), reference / pair
        meta, ref_meta = json.loads(storage.read_bytes(storage.join(done, "meta.json"))), json.loads((ref / "meta.json").read_text())
        assert meta["fingerprint"] == ref_meta["fingerprint"] and meta["status"] == "completed"
        image = np.asarray(Image.open(io.BytesIO(storage.read_bytes(storage.join(done, "stylized.png")))), dtype=float)
        expected = np.asarray(Image.open(ref / "stylized.png"), dtype=float)
        assert np.abs(image - expected).mean() < 0.02 * 255, pair
        assert meta["final"]["total"] == pytest.approx(ref_meta["final"]["total"], rel=0.02)
        assert_resumed(meta, pair, resumable)
    fs = storage.filesystem(out)
    hidden = [key for key in fs.find(out.split("://", 1)[1]) if key.rsplit("/", 1)[-1].startswith(".")]
    assert not hidden  # no checkpoint, claim or upload left behind


def test_a_batch_that_fails_mid_optimisation_is_retried_from_its_checkpoint(tmp_path, prefect_api, squeezenet_weights):
    """The device is lost at the 31st evaluation of the first batch: Prefect retries that batch, which goes on
    from the checkpoint its first attempt wrote instead of starting again."""
    job = make_job(tmp_path, squeezenet_weights, settings="batch_size: 1\nretry_delay_seconds: 0\n", defaults=", checkpoint_every: 5")
    code, _, err = run_cli("run", str(job), faults=[{"op": "evaluate", "after": 30, "times": 1, "error": "device lost (injected)"}])
    assert code == 0, err[-2000:]
    metas = {pair: json.loads((tmp_path / "out" / pair / "meta.json").read_text()) for pair in PAIRS}
    resumed = {pair: meta["resumed_from"] for pair, meta in metas.items() if meta["resumed_from"] is not None}
    assert len(resumed) == 1 and 5 <= next(iter(resumed.values())) <= 30, resumed
    (pair,) = resumed
    assert [row[0] for row in loss_columns(tmp_path / "out" / pair / "losses.csv")][1:] == [str(i) for i in range(1, 41)]
    assert not checkpoint_files(str(tmp_path / "out"))


def test_no_secret_reaches_outputs_logs_or_the_dashboard(tmp_path, s3_bucket, prefect_api, squeezenet_weights):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    key_id, secret = "AKIASTYLIZETEST7F3A", "stylize-test-secret-7f3a9c0d1e2b"
    for name, source in (("c/a.png", "tubingen.jpg"), ("s/b.png", "starry_night.jpg")):
        put(s3_bucket, f"job/{name}", small_png(source))
    broken = put(s3_bucket, "job/s/broken.png", b"\x89PNG broken")
    manifest = put(
        s3_bucket, "job/m.yaml",
        f"output: out\ndefaults: {{model: squeezenet1_1, weights: {squeezenet_weights}, size: 32, iterations: 3}}\n"
        "pairs:\n  - {content: c/a.png, style: [s/b.png, s/broken.png]}\n".encode(),
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", manifest], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]  # the broken pair fails, with a reason
    assert broken.rsplit("/", 1)[-1] in done.stderr + done.stdout

    texts = [done.stdout, done.stderr]
    fs = storage.filesystem(manifest)
    fs.invalidate_cache()
    for key in fs.find(f"{s3_bucket}/job/out"):
        texts.append(fs.cat_file(key).decode("latin-1"))
    report_key = next(k for k in fs.find(f"{s3_bucket}/job/out") if k.endswith("report.json"))
    flow_run_id = json.loads(fs.cat_file(report_key))["flow_run_id"]

    async def from_the_server():
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            flow_run = await client.read_flow_run(flow_run_id)
            return [l.message for l in logs] + [str(a.data) for a in artifacts] + [json.dumps(flow_run.parameters), str(flow_run.state)]

    server_texts = asyncio.run(from_the_server())
    assert len(server_texts) > 5
    assert any("Signature=" in text for text in server_texts)  # the report artifact's presigned links
    for text in texts + server_texts:
        assert secret not in text
        # a presigned URL names the access key that signed it (never the secret): only there may its id appear
        assert key_id not in re.sub(r"(AWSAccessKeyId=|X-Amz-Credential=)[^&)\s]+", "", text)


@pytest.fixture
def own_s3(s3_endpoint):
    """A second moto server on a port of its own, which a test may stop and start again: moto keeps its
    buckets in this process, so they survive the restart, as a real store's objects survive an outage."""
    from moto.server import ThreadedMotoServer

    from .conftest import free_port

    port = free_port()
    state = {"server": ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)}
    state["server"].start()

    def down():
        state["server"].stop()

    def up():
        state["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        state["server"].start()

    yield {"endpoint": f"http://127.0.0.1:{port}", "down": down, "up": up}
    try:
        state["server"].stop()
    except Exception:
        pass


def _s3_job(bucket: str, weights: Path, delays: str) -> str:
    for name, source in (("c/a.png", "tubingen.jpg"), ("c/b.png", "composition_vii.jpg"), ("s/x.png", "starry_night.jpg")):
        put(bucket, f"outage/{name}", small_png(source))
    return put(
        bucket, "outage/job.yaml",
        f"output: out\nretries: 3\nretry_delay_seconds: {delays}\n"
        f"defaults: {{model: squeezenet1_1, weights: {weights}, size: 48, iterations: 60}}\n"
        "pairs:\n  - {content: 'c/*.png', style: [s/x.png]}\n  - {id: third, content: c/a.png, style: c/b.png}\n".encode(),
    )


class _Run:
    """`stylize ARGS` in the background, its output in files (a pipe nobody reads can block a chatty process)."""

    def __init__(self, args: list[str], endpoint: str, folder: Path):
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": endpoint}
        self.out, self.err = open(folder / f"{args[0]}.out", "w+"), open(folder / f"{args[0]}.err", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, stdout=self.out, stderr=self.err, start_new_session=True
        )

    def poll(self):
        return self.process.poll()

    def communicate(self, timeout: float) -> tuple[str, str]:
        self.process.wait(timeout=timeout)
        self.out.seek(0), self.err.seek(0)
        return self.out.read(), self.err.read()

    @property
    def returncode(self) -> int:
        return self.process.returncode


def _start(args: list[str], endpoint: str, folder: Path) -> _Run:
    return _Run(args, endpoint, folder)


def _wait_for_first_pair(bucket: str, process: _Run, timeout: float = 300) -> None:
    fs = storage.filesystem(f"s3://{bucket}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fs.invalidate_cache()
        if fs.glob(f"{bucket}/outage/out/*/meta.json"):
            return
        assert process.poll() is None, process.communicate(10)
        time.sleep(0.2)
    raise TimeoutError("no pair finished")


def test_a_short_s3_outage_is_ridden_out(tmp_path, s3_bucket, own_s3, prefect_api, squeezenet_weights):
    manifest = _s3_job(s3_bucket, squeezenet_weights, "[3, 5, 5]")
    process = _start(["run", manifest], own_s3["endpoint"], tmp_path)
    _wait_for_first_pair(s3_bucket, process)
    own_s3["down"]()
    time.sleep(4)
    own_s3["up"]()
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    assert "3 completed, 0 skipped, 0 failed" in out


def test_a_long_s3_outage_fails_pairs_clearly_and_retry_failed_completes_them(tmp_path, s3_bucket, own_s3, prefect_api, squeezenet_weights):
    manifest = _s3_job(s3_bucket, squeezenet_weights, "[0.5]")
    process = _start(["run", manifest], own_s3["endpoint"], tmp_path)
    _wait_for_first_pair(s3_bucket, process)
    own_s3["down"]()
    out, err = process.communicate(timeout=900)
    own_s3["up"]()
    assert process.returncode == 1, err[-3000:]
    assert "Traceback" not in out
    failed_lines = [line for line in out.splitlines() if " failed " in line and "attempts)" in line]
    assert failed_lines, out
    report_line = next(line for line in out.splitlines() if "report: " in line)
    report = report_line.rsplit("report: ", 1)[1].strip()
    assert not report.startswith("s3://")  # the store was down: the report was kept locally
    process = _start(["retry-failed", report], own_s3["endpoint"], tmp_path)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    assert f"{len(failed_lines)} completed, 0 skipped, 0 failed" in out
