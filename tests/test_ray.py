"""Batches on a real two-node Ray cluster, and the Ray deployment run by a process worker.

Ray opens listeners on every interface whatever it is told (GCS, raylets, agents), so
these tests run in a network namespace of their own that has nothing but loopback:
`test_ray_runs_in_a_loopback_only_namespace` starts them there with `unshare` and
checks with `ss` that nothing of Ray listens in the host's namespace meanwhile.
Inside, they start their own Prefect server, a Ray head and a second Ray node, each
node declaring one logical GPU (`--num-gpus 1`), dashboards off.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import ROOT, free_port, stop
from .test_pipeline import run_cli, small_png

pytestmark = pytest.mark.slow
pytest.importorskip("prefect_ray", reason="the ray extra is not installed (`make setup` installs it)")

BIN = Path(sys.executable).parent


def test_ray_runs_in_a_loopback_only_namespace(tmp_path):
    """The tests marked `netns` below, run in a namespace with nothing but loopback; meanwhile every Ray
    process is checked to be outside the host's network namespace and never among its listeners."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rn", "true"]).returncode != 0:
        pytest.fail("unshare -rn (util-linux, user namespaces) is needed to keep Ray's listeners off the network")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PYTEST_CURRENT_TEST")}
    env["STYLIZE_NETNS"] = "1"
    inner = f'ip link set lo up && exec "{sys.executable}" -m pytest -q -p no:cacheprovider tests/test_ray.py'
    host = os.readlink("/proc/self/ns/net")
    seen, leaked = set(), set()
    log = tmp_path / "inner.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["unshare", "-rn", "sh", "-c", inner], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                listening = {int(pid) for pid in re.findall(r"pid=(\d+)", subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout)}
                for pid, namespace in ray_processes().items():
                    seen.add(pid)
                    if namespace == host or pid in listening:
                        leaked.add(pid)
                time.sleep(1)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
    text = log.read_text()
    assert process.returncode == 0, text[-6000:]
    assert re.search(r"\b3 passed\b", text), text[-3000:]
    assert seen, "no Ray process was seen: the check saw nothing"
    assert not leaked, f"Ray processes {sorted(leaked)} were in the host's network namespace"


def ray_processes() -> dict[int, str]:
    """pid → network namespace of every running GCS server and raylet."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in ("gcs_server", "raylet"):
                found[int(entry.name)] = os.readlink(entry / "ns" / "net")
        except OSError:  # gone meanwhile
            continue
    return found


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head and a second node on 127.0.0.1, one logical GPU each."""
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "1", "--disable-usage-stats"]
    head = [
        str(BIN / "ray"), "start", "--head", "--port", str(port), *common, "--include-dashboard", "false",
        "--dashboard-host", "127.0.0.1", "--ray-client-server-port", str(free_port()), "--temp-dir", str(temp),
    ]
    node = [str(BIN / "ray"), "start", "--address", f"127.0.0.1:{port}", *common]
    try:
        for command in (head, node):
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, cwd=ROOT)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)


def lay_out_pictures(folder: Path, weights) -> Path:
    """Eight pairs of one size: two photos × four styles, batches of two."""
    for name, source in (("a", "tubingen.jpg"), ("b", "the_scream.jpg")):
        (folder / f"{name}.png").write_bytes(small_png(source))
    for name, source in (("s1", "starry_night.jpg"), ("s2", "composition_vii.jpg"), ("s3", "tubingen.jpg"), ("s4", "the_scream.jpg")):
        (folder / f"{name}.png").write_bytes(small_png(source))
    manifest = folder / "job.yaml"
    manifest.write_text(
        f"output: ray-out\nbatch_size: 2\ndefaults: {{model: squeezenet1_1, weights: {weights}, size: 32, iterations: 6}}\n"
        "pairs:\n  - {content: [a.png, b.png], style: [s1.png, s2.png, s3.png, s4.png]}\n"
    )
    return manifest


def metas(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "meta.json").read_text()) for p in folder.iterdir() if p.name != "_runs"}


@pytest.mark.netns
def test_the_namespace_has_nothing_but_loopback():
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert {line.split()[1] for line in addresses.splitlines()} == {"lo"}


@pytest.mark.netns
def test_batches_run_on_both_nodes_and_match_the_local_runner(tmp_path, ray_cluster, prefect_api, squeezenet_weights):
    manifest = lay_out_pictures(tmp_path, squeezenet_weights)
    code, out, err = run_cli("run", str(manifest), "--runner", "ray", "--ray-address", ray_cluster)
    assert code == 0, err[-3000:]
    assert "8 completed, 0 skipped, 0 failed" in out
    on_ray = metas(tmp_path / "ray-out")
    assert {m["runner"] for m in on_ray.values()} == {"ray"}
    assert [m["batch"]["size"] for m in on_ray.values()] == [2] * 8  # batches, not single pairs
    nodes = {m["worker"]["node"] for m in on_ray.values()}
    assert len(nodes) == 2, f"every batch ran on one node: {nodes}"

    code, out, err = run_cli("run", str(manifest), "--output", str(tmp_path / "local-out"))
    assert code == 0, err[-3000:]
    local = metas(tmp_path / "local-out")
    for pair, meta in on_ray.items():
        assert meta["fingerprint"] == local[pair]["fingerprint"] and local[pair]["batch"]["size"] == 2
        assert meta["final"]["total"] == pytest.approx(local[pair]["final"]["total"], rel=1e-2)
        ray_image = np.asarray(Image.open(tmp_path / "ray-out" / pair / "stylized.png"), dtype=np.float32) / 255
        local_image = np.asarray(Image.open(tmp_path / "local-out" / pair / "stylized.png"), dtype=np.float32) / 255
        assert np.abs(ray_image - local_image).mean() < 0.01


@pytest.mark.netns
def test_the_ray_deployment_runs_on_the_cluster(tmp_path, ray_cluster, prefect_api, squeezenet_weights):
    manifest = lay_out_pictures(tmp_path, squeezenet_weights)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}

    def prefect(*args, timeout=300):
        done = subprocess.run([str(BIN / "prefect"), *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    prefect("work-pool", "create", "stylize-local", "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", "--name", "ray")
    assert ray_cluster in prefect("deployment", "inspect", "stylize-manifest/ray")
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "stylize-local"], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        prefect("deployment", "run", "stylize-manifest/ray", "--param", f"manifest={manifest}", "--watch", "--watch-timeout", "400", timeout=450)
    finally:
        stop(worker)
        log.close()
    done = metas(tmp_path / "ray-out")
    assert len(done) == 8 and {m["runner"] for m in done.values()} == {"ray"}
    assert all(m["worker"]["node"] for m in done.values())
