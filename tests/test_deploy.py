"""Deployments on a real Prefect server: prefect.yaml with a process worker, and `stylize serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, stop
from .test_pipeline import lay_out_job

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def prefect(*args, timeout=300, check=True):
    done = subprocess.run([str(BIN / "prefect"), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.fixture
def job(tmp_path, squeezenet_weights):
    return lay_out_job(tmp_path, squeezenet_weights)


def background(*command, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*command], cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def run_deployment_and_wait(name: str, manifest: Path) -> dict:
    done = prefect("deployment", "run", name, "--param", f"manifest={manifest}", "--watch", "--watch-timeout", "400", timeout=450)
    return {"stdout": done.stdout}


def assert_job_done(job: Path) -> None:
    (run_dir,) = (job / "out" / "_runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["counts"] == {"completed": 2, "skipped": 0, "failed": 0}
    assert (job / "out" / "tubingen-starry" / "stylized.png").exists()


def test_prefect_yaml_deploys_and_a_process_worker_runs_it(job, prefect_api, tmp_path):
    prefect("work-pool", "create", "stylize-local", "--type", "process", "--overwrite")
    prefect("work-pool", "set-concurrency-limit", "stylize-local", "1")  # the run book's concurrency step
    names = ("--name", "nightly", "--name", "ad-hoc", "--name", "retry-failed")  # the process pool's; k8s needs its pool
    done = prefect("--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", *names)
    for name in ("stylize-manifest/nightly", "stylize-manifest/ad-hoc", "stylize-retry-failed/retry-failed"):
        assert name in done.stdout
    inspected = prefect("deployment", "inspect", "stylize-manifest/nightly").stdout
    assert "0 1 * * *" in inspected and "stylize-local" in inspected
    worker = background(str(BIN / "prefect"), "worker", "start", "--pool", "stylize-local", log=tmp_path / "worker.log")
    try:
        run_deployment_and_wait("stylize-manifest/ad-hoc", job / "job.yaml")
    finally:
        stop(worker)
    assert_job_done(job)
    listed = prefect("flow-run", "ls", "--limit", "5").stdout  # the run book's "watch" step
    assert "stylize-manifest" in listed or "job-" in listed


def test_stylize_serve_runs_a_triggered_deployment(job, prefect_api, tmp_path):
    # serve and a work pool are alternatives: a host that serves starts from deployments of its own
    # (re-registering a pool deployment's name as a served one leaves the pool's storage settings behind).
    for name in ("stylize-manifest/nightly", "stylize-manifest/ad-hoc", "stylize-retry-failed/retry-failed"):
        prefect("deployment", "delete", name, check=False)
    serve = background(
        str(BIN / "stylize"), "serve", "--manifest", str(job / "job.yaml"), "--cron", "0 1 * * *", log=tmp_path / "serve.log"
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if prefect("deployment", "inspect", "stylize-manifest/ad-hoc", check=False).returncode == 0:
                break
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(2)
        run_deployment_and_wait("stylize-manifest/ad-hoc", job / "job.yaml")
        nightly = prefect("deployment", "inspect", "stylize-manifest/nightly").stdout
        assert "0 1 * * *" in nightly and str(job / "job.yaml") in nightly
    finally:
        stop(serve)
    assert_job_done(job)
