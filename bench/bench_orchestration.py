"""Orchestration overhead per pair and memory growth, on a manifest of many tiny pairs.

Runs the manifest flow in this process (the dashboard reporting on: progress artifacts, logs, the
summary artifacts) and reports, beside the optimisation's own seconds, the seconds per pair spent
around it, and the flow process's RSS growth per 100 pairs.
Usage: python bench/bench_orchestration.py [--pairs 500] [--iterations 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = ROOT.parent / "shared" / "data" / "models" / "squeezenet1_1-caffe-features-rgb.pth"


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_job(folder: Path, pairs: int, iterations: int) -> Path:
    contents = max(1, int(pairs**0.5))
    styles = -(-pairs // contents)
    rng = np.random.default_rng(0)
    for kind, count in (("c", contents), ("s", styles)):
        (folder / kind).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / kind / f"{kind}{i:03d}.png")
    weights = f"weights: {SHARED_WEIGHTS}, " if SHARED_WEIGHTS.exists() else ""
    entries = "".join(
        f"  - {{content: c/c{i % contents:03d}.png, style: s/s{i // contents:03d}.png}}\n" for i in range(pairs)
    )
    manifest = folder / "load.yaml"
    manifest.write_text(f"output: out\ndefaults: {{model: squeezenet1_1, {weights}size: 16, iterations: {iterations}}}\npairs:\n{entries}")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    folder = Path(tempfile.mkdtemp(prefix="stylize-load-"))
    os.environ.setdefault("PREFECT_HOME", str(folder / "prefect"))
    manifest = make_job(folder, args.pairs, args.iterations)

    from flows import commands, pipeline

    samples: list[tuple[int, float]] = []
    stop = threading.Event()

    def sample():
        out = folder / "out"
        while not stop.wait(1.0):
            done = sum(1 for d in out.iterdir() if (d / "meta.json").exists()) if out.exists() else 0
            samples.append((done, rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    code = commands._run_flow(pipeline.stylize_manifest, "local", "cpu", manifest=str(manifest))
    wall = time.perf_counter() - began
    stop.set()
    sampler.join()
    (report_path,) = (folder / "out" / "_runs").glob("*/report.json")
    report = json.loads(report_path.read_text())
    optimise = sum(p["seconds"] for p in report["pairs"])
    n = len(report["pairs"])
    steady = [(d, r) for d, r in samples if d >= n * 0.1]
    growth = (steady[-1][1] - steady[0][1]) / max(1, steady[-1][0] - steady[0][0]) * 100 if len(steady) > 1 else float("nan")
    in_flow = report["seconds"]  # from the first submission to the written report: no server start-up
    print(
        "\n| pairs | iterations | exit | wall s | in the flow s | optimisation s | overhead s/pair in the flow "
        "| overhead s/pair, wall | RSS start MB | RSS end MB | RSS growth MB/100 pairs |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {n} | {args.iterations} | {code} | {wall:.1f} | {in_flow:.1f} | {optimise:.1f} | {(in_flow - optimise) / n:.3f} "
        f"| {(wall - optimise) / n:.3f} | {samples[0][1] if samples else float('nan'):.0f} "
        f"| {samples[-1][1] if samples else float('nan'):.0f} | {growth:.1f} |"
    )


if __name__ == "__main__":
    main()
