"""The manifest flow against a real Prefect server and a real S3 endpoint (moto in server mode)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flows import storage

from . import images as fixtures
from .conftest import ROOT

pytestmark = pytest.mark.slow

SMALL = 80


def small_png(name: str) -> bytes:
    return fixtures.sample_png(name, SMALL)


def manifest_text(output: str, pairs: str, weights: str, extra: str = "") -> str:
    return (
        f"output: {output}\nretry_delay_seconds: 0\n{extra}"
        f"defaults:\n  model: squeezenet1_1\n  weights: {weights}\n  size: 48\n  iterations: 6\n"
        f"pairs:\n{pairs}"
    )


PAIRS = """  - id: tubingen-starry
    content: photos/tubingen.png
    style: styles/starry_night.png
  - content: photos/tubingen.png
    style: styles/the_scream.png
    iterations: 4
"""


def lay_out_job(folder: Path, weights) -> Path:
    """photos/tubingen.png, styles/{starry_night,the_scream}.png and job.yaml (the two PAIRS) in `folder`."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / "styles").mkdir(exist_ok=True)
    (folder / "photos" / "tubingen.png").write_bytes(small_png("tubingen.jpg"))
    (folder / "styles" / "starry_night.png").write_bytes(small_png("starry_night.jpg"))
    (folder / "styles" / "the_scream.png").write_bytes(small_png("the_scream.jpg"))
    (folder / "job.yaml").write_text(manifest_text("out", PAIRS, weights))
    return folder


@pytest.fixture
def workspace(tmp_path, squeezenet_weights):
    return lay_out_job(tmp_path, squeezenet_weights)


def run_cli(*args, faults: list | None = None) -> tuple[int, str, str]:
    """`stylize ARGS` as an operator runs it: a new process, its console output captured whole."""
    env = dict(os.environ)
    if faults:
        env["PYTHONPATH"] = str(ROOT / "tests" / "faults")
        env["STYLIZE_FAULTS"] = json.dumps(faults)
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return done.returncode, done.stdout, done.stderr


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file() and "_runs" not in p.parts}


def test_local_run_writes_everything_then_skips(workspace, prefect_api):
    code, out, err = run_cli("run", str(workspace / "job.yaml"))
    assert code == 0, err
    out_dir = workspace / "out"
    assert sorted(p.name for p in out_dir.iterdir()) == ["_runs", "tubingen-starry", "tubingen-the_scream"]
    for pair, iterations in (("tubingen-starry", 6), ("tubingen-the_scream", 4)):
        folder = out_dir / pair
        assert sorted(p.name for p in folder.iterdir()) == ["losses.csv", "losses.png", "meta.json", "stylized.png"]
        assert Image.open(folder / "stylized.png").size == (48, 36)
        assert Image.open(folder / "losses.png").format == "PNG"
        rows = list(csv.DictReader(open(folder / "losses.csv")))
        assert len(rows) == iterations and list(rows[0]) == ["iteration", "content", "style", "tv", "total", "scale", "seconds"]
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["status"] == "completed" and meta["iterations"] == iterations
        assert meta["inputs"]["content"]["sha256"] == storage_sha(workspace / "photos" / "tubingen.png")
        assert meta["weights"]["sha256"].startswith("9e6744a8") and meta["resolved"]["preprocessing"] == "caffe"
        assert meta["options"]["iterations"] == iterations and meta["versions"]["torch"]
        assert meta["worker"]["device"] == "cpu" and meta["runner"] == "local"
    (run_dir,) = (out_dir / "_runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert [p["status"] for p in report["pairs"]] == ["completed", "completed"]
    assert report["pairs"][0]["final"]["style"] > 0 and report["counts"]["completed"] == 2
    assert Image.open(run_dir / "contact_sheet.png").height > 2 * 160
    assert "2 completed, 0 skipped, 0 failed" in out

    before = snapshot(out_dir)
    leftovers = [out_dir / "tubingen-starry" / name for name in (".checkpoint.pt", ".claim.json")]
    for path in leftovers:  # as a run killed between the pair's meta.json and its tidying leaves them
        path.write_bytes(b"left behind")
    code, out, err = run_cli("run", str(workspace / "job.yaml"))
    assert code == 0, err
    assert "0 completed, 2 skipped, 0 failed" in out
    assert not any(path.exists() for path in leftovers)  # a skipped pair is tidied
    assert snapshot(out_dir) == before  # nothing rewritten
    assert len(list((out_dir / "_runs").iterdir())) == 2

    # A changed option changes the fingerprint: only that pair runs again.
    (workspace / "job.yaml").write_text(manifest_text("out", PAIRS.replace("iterations: 4", "iterations: 5"), os.environ.get("X", "") or _weights(workspace)))
    code, out, err = run_cli("run", str(workspace / "job.yaml"))
    assert code == 0 and "1 completed, 1 skipped, 0 failed" in out


def test_pairs_of_one_size_share_a_device_batch(workspace, prefect_api):
    pairs = (
        "  - content: photos/tubingen.png\n    style: [styles/starry_night.png, styles/the_scream.png]\n"
        "  - id: blend\n    content: photos/tubingen.png\n    style: {styles/starry_night.png: 0.6, styles/the_scream.png: 0.4}\n"
        "  - id: tall\n    content: photos/tall.png\n    style: styles/starry_night.png\n"
    )
    Image.open(workspace / "photos" / "tubingen.png").transpose(Image.Transpose.ROTATE_90).save(workspace / "photos" / "tall.png")
    (workspace / "batch.yaml").write_text(manifest_text("batched", pairs, _shared_weights()))
    code, out, err = run_cli("run", str(workspace / "batch.yaml"))
    assert code == 0, err
    assert "4 completed, 0 skipped, 0 failed" in out
    metas = {p.name: json.loads((p / "meta.json").read_text()) for p in (workspace / "batched").iterdir() if p.name != "_runs"}
    assert {name: m["batch"]["size"] for name, m in metas.items()} == {
        "tubingen-starry_night": 3, "tubingen-the_scream": 3, "blend": 3, "tall": 1,
    }
    assert metas["blend"]["inputs"]["style"]["blend"][1]["weight"] == 0.4
    assert metas["tall"]["size"] == [36, 48] and metas["blend"]["size"] == [48, 36]
    plan = metas["blend"]["memory"]["plan"]
    assert plan[0]["batch"] == 3 and plan[0]["size"] == [48, 36] and plan[0]["estimate_bytes"] > 0
    (run_dir,) = (workspace / "batched" / "_runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    by_id = {p["id"]: p for p in report["pairs"]}
    assert by_id["blend"]["batch"] == 3
    shared = by_id["blend"]["seconds"]  # a batch's device time is counted once, not once per pair
    assert report["device_seconds"]["cpu"] == pytest.approx(shared + by_id["tall"]["seconds"], abs=0.01)


def _weights(workspace: Path) -> str:
    return json.loads((workspace / "out" / "tubingen-starry" / "meta.json").read_text())["weights"]["source"]


def storage_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_corrupt_image_fails_only_its_pair_and_retry_failed_completes_it(workspace, prefect_api):
    (workspace / "styles" / "broken.png").write_bytes(small_png("the_scream.jpg")[:200])
    pairs = PAIRS + "  - id: broken-style\n    content: photos/tubingen.png\n    style: styles/broken.png\n"
    (workspace / "job.yaml").write_text(manifest_text("out", pairs, _shared_weights()))
    code, out, err = run_cli("run", str(workspace / "job.yaml"))
    assert code == 1
    assert "broken-style" in err and "retry-failed" in err
    assert "Traceback" not in out + err
    (run_dir,) = (workspace / "out" / "_runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    by_id = {p["id"]: p for p in report["pairs"]}
    assert by_id["tubingen-starry"]["status"] == "completed"
    assert by_id["broken-style"]["status"] == "failed"
    assert "broken.png: damaged image" in by_id["broken-style"]["error"]
    assert not (workspace / "out" / "broken-style").exists()

    (workspace / "styles" / "broken.png").write_bytes(small_png("composition_vii.jpg"))
    code, out, err = run_cli("retry-failed", str(run_dir / "report.json"))
    assert code == 0, err
    assert "1 completed, 0 skipped, 0 failed" in out
    retry_reports = [p for p in (workspace / "out" / "_runs").iterdir() if p != run_dir]
    (retry_dir,) = retry_reports
    retried = json.loads((retry_dir / "report.json").read_text())
    assert [(p["id"], p["status"]) for p in retried["pairs"]] == [("broken-style", "completed")]
    assert (workspace / "out" / "broken-style" / "meta.json").exists()


def _shared_weights() -> str:
    from stylecore import weights

    return str(weights.packaged_file("squeezenet1_1"))


def test_a_transient_storage_failure_is_retried(workspace, prefect_api):
    faults = [{"op": "write", "match": "tubingen-starry/stylized.png", "times": 2, "error": "simulated storage outage"}]
    code, out, err = run_cli("run", str(workspace / "job.yaml"), faults=faults)
    assert code == 0, err
    assert "2 completed, 0 skipped, 0 failed" in out
    assert err.count("simulated storage outage") == 2  # two failed attempts were logged, the third succeeded
    assert "Traceback" not in out + err


def test_a_persistent_storage_failure_fails_the_pair_after_its_retries(workspace, prefect_api):
    faults = [{"op": "write", "match": "tubingen-starry/", "times": -1, "error": "storage is down"}]
    code, out, err = run_cli("run", str(workspace / "job.yaml"), faults=faults)
    assert code == 1
    assert "ConnectionError: storage is down (after 3 attempts)" in out  # the try and the default 2 retries
    assert "1 completed, 0 skipped, 1 failed" in out
    assert "Traceback" not in out + err
    assert not (workspace / "out" / "tubingen-starry").exists()


def test_artifacts_are_on_the_server(workspace, prefect_api):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    code, out, err = run_cli("run", str(workspace / "job.yaml"))
    assert code == 0, err
    (run_dir,) = (workspace / "out" / "_runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())

    async def read():
        async with get_client() as client:
            flow_run = await client.read_flow_run(report["flow_run_id"])
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
            )
            task_runs = await client.read_task_runs(flow_run_filter=_flow_run_filter(flow_run.id))
            return flow_run, artifacts, task_runs

    flow_run, artifacts, task_runs = asyncio.run(read())
    assert flow_run.name == report["run_name"] and flow_run.name.startswith("job-")
    names = sorted(t.name for t in task_runs)
    for pair in ("tubingen-starry", "tubingen-the_scream"):  # each pair under its id: its read step and its write step
        assert pair in names and f"{pair}: write" in names
    batches = [n for n in names if n.startswith("batch ")]
    assert len(batches) == 2 and "store-report" in names  # their options differ, so two batches of one
    assert len(names) == 7
    by_type = {}
    for artifact in artifacts:
        by_type.setdefault(artifact.type, []).append(artifact)
    progress = {a.key: a.data for a in by_type["progress"]}
    assert progress == {"progress-tubingen-starry": 100.0, "progress-tubingen-the-scream": 100.0}
    (table,) = by_type["table"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["pair"] for r in rows} == {"tubingen-starry", "tubingen-the_scream"}
    (markdown,) = by_type["markdown"]
    assert "2 completed, 0 skipped, 0 failed" in markdown.data and report["report"] in markdown.data


def _flow_run_filter(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


def put(bucket: str, key: str, data: bytes) -> str:
    storage.write_bytes(f"s3://{bucket}/{key}", data)
    return f"s3://{bucket}/{key}"


def test_s3_to_s3_through_the_cli(s3_bucket, prefect_api, squeezenet_weights):
    """The whole product path: a manifest, inputs and weights on S3, run by the console script."""
    put(s3_bucket, "jobs/photos/tubingen.png", small_png("tubingen.jpg"))
    put(s3_bucket, "jobs/styles/starry_night.png", small_png("starry_night.jpg"))
    put(s3_bucket, "jobs/styles/the_scream.png", small_png("the_scream.jpg"))
    put(s3_bucket, "models/squeezenet.pth", Path(squeezenet_weights).read_bytes())
    manifest = put(s3_bucket, "jobs/museum.yaml", manifest_text("results", PAIRS, f"s3://{s3_bucket}/models/squeezenet.pth").encode())
    env = {**os.environ}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", manifest], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    fs = storage.filesystem(manifest)
    fs.invalidate_cache()
    for pair in ("tubingen-starry", "tubingen-the_scream"):
        image = Image.open(io.BytesIO(storage.read_bytes(f"s3://{s3_bucket}/jobs/results/{pair}/stylized.png")))
        assert image.size == (48, 36)
        meta = json.loads(storage.read_bytes(f"s3://{s3_bucket}/jobs/results/{pair}/meta.json"))
        assert meta["weights"]["source"] == f"s3://{s3_bucket}/models/squeezenet.pth"
    (report_key,) = fs.glob(f"{s3_bucket}/jobs/results/_runs/*/report.json")
    report = json.loads(fs.cat_file(report_key))
    assert report["counts"] == {"completed": 2, "skipped": 0, "failed": 0}


def test_mixed_local_manifest_s3_inputs_local_output(workspace, s3_bucket, prefect_api):
    put(s3_bucket, "in/a.png", small_png("tubingen.jpg"))
    put(s3_bucket, "in/b.png", small_png("the_scream.jpg"))
    pairs = f"  - content: s3://{s3_bucket}/in/*.png\n    style: styles/starry_night.png\n"
    (workspace / "mixed.yaml").write_text(manifest_text("mixed-out", pairs, _shared_weights()))
    code, out, err = run_cli("run", str(workspace / "mixed.yaml"))
    assert code == 0, err
    assert sorted(p.name for p in (workspace / "mixed-out").iterdir()) == ["_runs", "a-starry_night", "b-starry_night"]
    meta = json.loads((workspace / "mixed-out" / "a-starry_night" / "meta.json").read_text())
    assert meta["inputs"]["content"]["uri"] == f"s3://{s3_bucket}/in/a.png"

    code, out, err = run_cli("run", str(workspace / "mixed.yaml"), "--output", f"s3://{s3_bucket}/mixed")
    assert code == 0, err
    storage.filesystem(f"s3://{s3_bucket}").invalidate_cache()
    assert storage.exists(f"s3://{s3_bucket}/mixed/b-starry_night/meta.json")
