"""Across processes and pods, against a real Prefect server: two runs on one host share its device one batch
at a time, and a manifest spreads over child flow runs of a deployment (process workers stand in for pods)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from flows import claims

from .conftest import ROOT, stop
from .test_pipeline import small_png

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def lay_out(folder: Path, weights, names: str, iterations: int, batch_size: int | str = 1, pictures: int = 3) -> Path:
    """A photo per name (`pictures` different ones, so sizes differ when more than one) and one style."""
    for name in names:
        (folder / f"{name}.png").write_bytes(small_png(("tubingen.jpg", "the_scream.jpg", "composition_vii.jpg")[ord(name) % pictures]))
    (folder / "style.png").write_bytes(small_png("starry_night.jpg"))
    manifest = folder / "job.yaml"
    manifest.write_text(
        f"output: out\nbatch_size: {batch_size}\n"
        f"defaults: {{model: squeezenet1_1, weights: {weights}, size: 64, iterations: {iterations}}}\n"
        f"pairs:\n  - {{content: '[{names}].png', style: style.png}}\n"
    )
    return manifest


def stylize(*args, log: Path, faults: list | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if faults:
        env.update(PYTHONPATH=str(ROOT / "tests" / "faults"), STYLIZE_FAULTS=json.dumps(faults))
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def intervals(folder: Path) -> list[tuple[str, datetime, datetime, str]]:
    spans = []
    for meta_file in folder.glob("*/meta.json"):
        meta = json.loads(meta_file.read_text())
        device = f"{meta['worker']['host']}/{meta['worker']['device']}"
        spans.append((device, datetime.fromisoformat(meta["started_at"]), datetime.fromisoformat(meta["finished_at"]), meta["id"]))
    return spans


def test_two_runs_at_once_never_share_a_device(tmp_path, prefect_api, squeezenet_weights):
    """Each run leases the host's device through the server's global concurrency limit; meta.json's optimisation
    times (microseconds) show no two optimisations overlapped. The runs start together and each needs far more
    device time than a flow takes to start, so without the lease their optimisations would overlap. (Which run
    gets the device next is the server's choice: its slots are not granted first come, first served.)"""
    runs = []
    for name, pairs in (("first", "abcdefgh"), ("second", "ijklmnop")):
        folder = tmp_path / name
        folder.mkdir()
        runs.append((folder, stylize("run", str(lay_out(folder, squeezenet_weights, pairs, 300)), log=folder / "log.txt")))
    for folder, process in runs:
        assert process.wait(timeout=900) == 0, (folder / "log.txt").read_text()[-3000:]
    first, second = (intervals(folder / "out") for folder, _ in runs)
    assert len(first) == len(second) == 8
    spans = sorted(first + second, key=lambda s: s[1])
    for (device, _, end, pair), (next_device, start, _, next_pair) in zip(spans, spans[1:]):
        assert device == next_device  # one host, one CPU
        assert end <= start, f"{pair} and {next_pair} optimised on {device} at the same time"


def test_two_runs_of_one_manifest_make_each_pair_once(tmp_path, prefect_api, squeezenet_weights):
    """Started together, both runs read every pair; each pair is optimised by the run that claimed it first and
    reported skipped (being made by that run) or skipped (finished) by the other. Each run has its own report.
    Slow storage (each picture lands 2 s late, as a big image on S3 would) makes sure the other run gets the
    device while a pair it has read is still being written."""
    manifest = lay_out(tmp_path, squeezenet_weights, "abcdefgh", 40)
    slow = [{"op": "write", "match": "stylized.png", "times": -1, "delay": 2}]
    runs = [stylize("run", str(manifest), log=tmp_path / f"log-{i}.txt", faults=slow) for i in range(2)]
    for i, process in enumerate(runs):
        assert process.wait(timeout=900) == 0, (tmp_path / f"log-{i}.txt").read_text()[-3000:]
    reports = [json.loads((run / "report.json").read_text()) for run in (tmp_path / "out" / "_runs").iterdir()]
    assert len(reports) == 2
    made = sorted(p["id"] for r in reports for p in r["pairs"] if p["status"] == "completed")
    assert made == sorted(f"{n}-style" for n in "abcdefgh"), "a pair was optimised twice, or never"
    assert all(p["status"] in ("completed", "skipped") for r in reports for p in r["pairs"])
    assert not list((tmp_path / "out").glob(f"*/{claims.CLAIM_NAME}"))  # each claim went with its meta.json


def test_a_manifest_fans_out_over_child_flow_runs(tmp_path, prefect_api, squeezenet_weights):
    """runner: deployment. The parent plans batches and gives each of two child flow runs of a deployment a share;
    two process workers run them (as two pods would); each child batches its share; one report gathers all."""

    def prefect(*args):
        done = subprocess.run([str(BIN / "prefect"), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    prefect("work-pool", "create", "stylize-pods", "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "flows/pipeline.py:stylize_manifest", "--name", "pods", "--pool", "stylize-pods")
    manifest = lay_out(tmp_path, squeezenet_weights, "abcdefgh", 4, batch_size=2, pictures=1)  # one size: 4 batches of 2
    workers = [
        subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "stylize-pods", "--limit", "1"], cwd=ROOT,
            stdout=open(tmp_path / f"worker-{i}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        for i in range(2)
    ]
    try:
        parent = stylize(
            "run", str(manifest), "--runner", "deployment", "--shard-deployment", "stylize-manifest/pods", "--shards", "2",
            log=tmp_path / "parent.log",
        )
        assert parent.wait(timeout=900) == 0, (tmp_path / "parent.log").read_text()[-3000:]
    finally:
        for worker in workers:
            stop(worker)
    out = tmp_path / "out"
    runs = sorted(p for p in (out / "_runs").iterdir())
    reports = [json.loads((run / "report.json").read_text()) for run in runs]
    (whole,) = [r for r in reports if len(r["pairs"]) == 8]
    assert whole["counts"] == {"completed": 8, "skipped": 0, "failed": 0}
    children = [r for r in reports if r is not whole]
    assert len(children) == 2 and sorted(len(r["pairs"]) for r in children) == [4, 4]
    metas = [json.loads(p.read_text()) for p in out.glob("*/meta.json")]
    assert len({m["worker"]["pid"] for m in metas}) == 2  # a process (a pod) per child flow run
    assert all(m["batch"]["size"] == 2 for m in metas)  # each child batched its share
    by_child = {r["run_name"]: {p["id"] for p in r["pairs"]} for r in children}
    pid_of = {m["id"]: m["worker"]["pid"] for m in metas}
    for ids in by_child.values():
        assert len({pid_of[i] for i in ids}) == 1
