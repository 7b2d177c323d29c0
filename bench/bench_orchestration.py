"""Orchestration seconds per pair on a big manifest, through a real Prefect server: a first run, then a re-run
where every pair is skipped; and whether the flow's memory stays flat.

A manifest of tiny pairs (16 px, 1 iteration, SqueezeNet) makes the optimisation a sliver of the time, so what
is measured is what the project adds around it: header reads, batch planning, the read/optimise/write tasks and
their states on the server, device leases, progress artifacts, outputs and the report. The server runs in its
own process (`prefect server start` on 127.0.0.1, SQLite), as an operator's would.

With `--handover S1 S2 …` the first run is made once per device-lease hand-over time (see
`flows/devices.py`; 0 asks the server for every batch), side by side in one process on one server.

First of all it times Prefect's own floor on the same server: a flow of the same shape (a task per pair, one per
batch of 8 taking those futures, then a task per pair taking the batch's future) whose tasks do nothing. What the
first run costs above that row is the project's own work; the floor is what Prefect costs to show each pair.
The server records a run's task states from their events behind the flow: after each run the bench waits
until it is idle again ("server behind s") and counts its CPU until then, so every run starts on an idle server;
"s/pair until the server caught up" adds that wait, the rate a long run is held to.

Usage: python bench/bench_orchestration.py [--pairs 20000] [--iterations 1] [--handover 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and every process below it."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in (e for e in Path("/proc").iterdir() if e.name.isdigit()):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return sum(used.get(p, 0.0) for p in tree)


def make_job(folder: Path, pairs: int, iterations: int) -> Path:
    """√pairs contents × √pairs styles, crossed by one manifest entry of two globs."""
    contents = math.isqrt(pairs)
    styles = -(-pairs // contents)
    rng = np.random.default_rng(0)
    for kind, count in (("c", contents), ("s", styles)):
        (folder / kind).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / kind / f"{kind}{i:05d}.png")
    manifest = folder / "load.yaml"
    manifest.write_text(
        "output: out\nretry_delay_seconds: 0\n"
        f"defaults: {{model: squeezenet1_1, size: 16, iterations: {iterations}}}\n"
        "pairs:\n  - {content: c/*.png, style: s/*.png}\n"
    )
    return manifest


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).parent / "prefect")
    process = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"],
        env=env, stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the Prefect server did not start")


FLOOR_BATCH = 8


def prefect_floor(pairs: int, server: int) -> dict:
    """The read → optimise → write shape with tasks that do nothing, through the same server."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.futures import wait

    options = dict(cache_policy=NO_CACHE, persist_result=False)

    @task(name="read-nothing", **options)
    def read(index: int) -> int:
        return index

    @task(name="optimise-nothing", **options)
    def optimise(members: list[int]) -> list[int]:
        return members

    @task(name="write-nothing", **options)
    def write(results: list[int], index: int) -> int:
        return results[index]

    @flow(name="prefect-floor", persist_result=False)
    def floor() -> None:
        reads = [read.submit(i) for i in range(pairs)]
        writes = []
        for start in range(0, pairs, FLOOR_BATCH):
            members = reads[start : start + FLOOR_BATCH]
            batch = optimise.submit(members)
            writes += [write.submit(batch, i) for i in range(len(members))]
        wait(writes)

    _, cost = measured(floor, server)
    return {
        "pairs": pairs, "wall_s": round(cost.wall, 1), "per_pair_s": round(cost.wall / pairs, 4),
        "caught_up_per_pair_s": round((cost.wall + cost.behind) / pairs, 4), **cost.cpu_record(),
    }


@dataclass
class Cost:
    wall: float  # seconds until `run` returned
    flow_cpu: float  # CPU seconds of this process meanwhile
    behind: float  # seconds the server went on working after that
    server_cpu: float  # CPU seconds of the server's process tree, until it was idle again

    def cpu_record(self) -> dict:
        return {"flow_cpu_s": round(self.flow_cpu, 1), "server_cpu_s": round(self.server_cpu, 1), "server_behind_s": self.behind}


def measured(run, server: int):
    """`run()`'s value and its cost: its time, the CPU this process used, and the server's until it has caught up."""
    began, flow_cpu, server_cpu = time.perf_counter(), cpu_seconds(os.getpid()), cpu_seconds(server)
    value = run()
    wall, flow_cpu = time.perf_counter() - began, cpu_seconds(os.getpid()) - flow_cpu
    behind = settle(server)
    return value, Cost(wall, flow_cpu, behind, cpu_seconds(server) - server_cpu)


def settle(server: int, idle_cpu: float = 0.1, longest: float = 600) -> float:
    """Wait until the server has worked off what the last run sent it (its event pipeline runs behind the
    flow): under `idle_cpu` CPU seconds in a second. Each run then starts on an idle server. The seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < longest:
        before = cpu_seconds(server)
        time.sleep(1.0)
        if cpu_seconds(server) - before < idle_cpu:
            break
    return round(time.perf_counter() - began, 1)


def run_once(manifest: Path, folder: Path, server: int, output: str = "out") -> dict:
    """One flow run in this process, with the flow's RSS sampled against the pairs done, and the CPU seconds
    the flow's process and the server's used for it (which of the two is the bottleneck), the server's
    counted until it has caught up."""
    from flows import commands, pipeline

    samples: list[tuple[int, float]] = []
    stop = threading.Event()
    runs = folder / output / "_runs"
    before = set(runs.iterdir()) if runs.exists() else set()

    def sample():
        while not stop.wait(2.0):
            samples.append((time.perf_counter(), rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    code, cost = measured(lambda: commands._run_flow(pipeline.stylize_manifest, "local", "cpu", manifest=str(manifest)), server)
    stop.set()
    sampler.join()
    (run_dir,) = set(runs.iterdir()) - before
    report = json.loads((run_dir / "report.json").read_text())
    device = sum(report["device_seconds"].values())
    n = len(report["pairs"])
    middle = [rss for t, rss in samples if began + 0.2 * cost.wall <= t <= began + 0.9 * cost.wall]
    return {
        "pairs": n, "exit": code, "counts": report["counts"], "wall_s": round(cost.wall, 1), "in_flow_s": report["seconds"],
        "device_s": round(device, 1), "per_pair_s": round((report["seconds"] - device) / n, 4),
        "caught_up_per_pair_s": round((report["seconds"] + cost.behind - device) / n, 4), **cost.cpu_record(),
        "rss_mb": [round(middle[0]) if middle else None, round(max(middle)) if middle else None, round(rss_mb())],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--handover", type=float, nargs="+", default=[30.0], metavar="S", help="lease hand-over seconds to compare")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stylize-load-"))
    for key, value in {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_HOME": str(folder / "client"),
    }.items():
        os.environ.setdefault(key, value)
    (folder / "server").mkdir()
    server, url = start_server(folder / "server")
    os.environ["PREFECT_API_URL"] = url
    from flows import devices

    runs: list[tuple[str, dict]] = []
    try:
        manifest = make_job(folder, args.pairs, args.iterations)
        settle(server.pid)
        floor = prefect_floor(args.pairs, server.pid)
        for seconds in args.handover:
            devices.HANDOVER_SECONDS = seconds
            own = manifest.with_name(f"load-h{seconds:g}.yaml")  # a fresh output folder per setting
            own.write_text(manifest.read_text().replace("output: out", f"output: out-h{seconds:g}"))
            runs.append((f"first, hand-over {seconds:g} s", run_once(own, folder, server.pid, f"out-h{seconds:g}")))
        runs.append((f"re-run, hand-over {seconds:g} s", run_once(own, folder, server.pid, f"out-h{seconds:g}")))
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores; {args.iterations} iteration(s) at 16 px, SqueezeNet\n")
    print(
        "| run | pairs | exit | completed | skipped | wall s | in the flow s | device s | orchestration s/pair "
        "| CPU s: flow / server | server behind s | s/pair until the server caught up | flow RSS MB at 20% / peak / end |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    print(
        f"| Prefect's floor (tasks that do nothing) | {floor['pairs']} | | | | {floor['wall_s']} | | | {floor['per_pair_s']:.4f} "
        f"| {floor['flow_cpu_s']} / {floor['server_cpu_s']} | {floor['server_behind_s']} "
        f"| {floor['caught_up_per_pair_s']:.4f} | |"
    )
    for label, r in runs:
        print(
            f"| {label} | {r['pairs']} | {r['exit']} | {r['counts']['completed']} | {r['counts']['skipped']} | {r['wall_s']} "
            f"| {r['in_flow_s']} | {r['device_s']} | {r['per_pair_s']:.4f} | {r['flow_cpu_s']} / {r['server_cpu_s']} | {r['server_behind_s']} | {r['caught_up_per_pair_s']:.4f} | {' / '.join(str(x) for x in r['rss_mb'])} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "floor": floor, "runs": dict(runs)}, indent=2))


if __name__ == "__main__":
    main()
