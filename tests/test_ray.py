"""Fan-out on Ray: a local head on 127.0.0.1 (2 CPUs, no dashboard) runs a 4-pair manifest, and the
results equal those of the default runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_port
from .test_pipeline import run_cli, small_png

pytestmark = pytest.mark.slow
pytest.importorskip("prefect_ray", reason="the ray extra is not installed (`make setup` installs it)")

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [
        RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
        "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp),
    ]
    done = subprocess.run(start, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def test_a_manifest_on_ray_matches_the_default_runner(tmp_path, ray_head, prefect_api, squeezenet_weights):
    for name, source in (("a", "tubingen.jpg"), ("b", "the_scream.jpg")):
        (tmp_path / f"{name}.png").write_bytes(small_png(source))
    for name, source in (("s1", "starry_night.jpg"), ("s2", "composition_vii.jpg")):
        (tmp_path / f"{name}.png").write_bytes(small_png(source))
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        # batch_size 1: on Ray a pair runs alone, and a batched one may differ from it by float rounding
        f"output: ray-out\nbatch_size: 1\ndefaults: {{model: squeezenet1_1, weights: {squeezenet_weights}, size: 40, iterations: 5}}\n"
        "pairs:\n  - {content: [a.png, b.png], style: [s1.png, s2.png]}\n"
    )
    code, out, err = run_cli("run", str(manifest), "--runner", "ray", "--ray-address", ray_head)
    assert code == 0, err[-3000:]
    assert "4 completed, 0 skipped, 0 failed" in out
    code, out, err = run_cli("run", str(manifest), "--output", str(tmp_path / "local-out"))
    assert code == 0, err[-3000:]
    pairs = ["a-s1", "a-s2", "b-s1", "b-s2"]
    for pair in pairs:
        on_ray = json.loads((tmp_path / "ray-out" / pair / "meta.json").read_text())
        local = json.loads((tmp_path / "local-out" / pair / "meta.json").read_text())
        assert on_ray["runner"] == "ray" and local["runner"] == "local"
        assert on_ray["fingerprint"] == local["fingerprint"]
        assert on_ray["final"] == pytest.approx(local["final"], rel=1e-4)
        assert (tmp_path / "ray-out" / pair / "stylized.png").read_bytes() == (tmp_path / "local-out" / pair / "stylized.png").read_bytes()
    # Each pair ran in a Ray worker process, not in the flow's; workers are reused across pairs.
    ray_pids = {json.loads((tmp_path / "ray-out" / p / "meta.json").read_text())["worker"]["pid"] for p in pairs}
    assert len(ray_pids) <= 2
