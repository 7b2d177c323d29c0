"""`stylize run` stopped by SIGTERM, or by Ctrl-C (SIGINT to the process group): it ends within seconds with one
line and 143/130, the report holds what finished, and no process (Prefect's temporary server included) is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import images as fixtures
from .conftest import ROOT

pytestmark = pytest.mark.slow

STYLES = ("starry_night.jpg", "the_scream.jpg", "composition_vii.jpg")


def lay_out(folder: Path, weights: Path) -> Path:
    """Four pairs, one batch each: the first done in 5 iterations, the others long (3000)."""
    (folder / "in").mkdir(parents=True)
    names = ("tubingen.jpg", *STYLES)
    for name in names:
        (folder / "in" / name.replace(".jpg", ".png")).write_bytes(fixtures.sample_png(name, 80))
    pairs = "  - id: quick\n    content: in/tubingen.png\n    style: in/starry_night.png\n    iterations: 5\n"
    for style in STYLES:
        stem = style.removesuffix(".jpg")
        pairs += f"  - id: long-{stem}\n    content: in/tubingen.png\n    style: in/{stem}.png\n"
    (folder / "job.yaml").write_text(
        "output: out\nbatch_size: 1\nretries: 2\nretry_delay_seconds: 0\n"
        f"defaults:\n  model: squeezenet1_1\n  weights: {weights}\n  size: 64\n  iterations: 3000\n"
        f"pairs:\n{pairs}"
    )
    return folder / "job.yaml"


def session_processes(sid: int) -> list[str]:
    """The command lines of the processes still in session `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # state ppid pgrp session …
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_stops_the_run_keeps_what_finished_and_leaves_nothing(tmp_path, squeezenet_weights, signum):
    manifest = lay_out(tmp_path, squeezenet_weights)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # Prefect's temporary server
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", str(manifest)], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        quick = tmp_path / "out" / "quick" / "meta.json"
        deadline = time.monotonic() + 300
        while not quick.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the first pair did not finish in 300 s"
            time.sleep(0.2)
        time.sleep(1.0)  # the next batch is optimising (the two batches in flight race to the device: either may be first)
        finished = sorted(p.parent.name for p in (tmp_path / "out").glob("*/meta.json"))
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        else:
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        took = time.monotonic() - sent
        print(f"{signal.Signals(signum).name}: exited {process.returncode} after {took:.1f} s")

        assert process.returncode == 128 + signum, err
        assert took < 30
        assert "Traceback" not in err and "Traceback" not in out, err
        last = err.strip().splitlines()[-1]
        name = signal.Signals(signum).name
        assert last.startswith(f"stylize: interrupted by {name}; {len(finished)} of 4 pairs finished, report: "), err
        report = json.loads(Path(last.split("report: ", 1)[1]).read_text())
        status = {p["id"]: (p["status"], p.get("error")) for p in report["pairs"]}
        assert "quick" in finished and len(finished) < 4
        assert status == {
            pair: ("completed", None) if pair in finished else ("failed", f"interrupted ({name})")
            for pair in ["quick", *(f"long-{s.removesuffix('.jpg')}" for s in STYLES)]
        }

        time.sleep(1.0)  # what the process stopped on its way out has had time to go
        left = session_processes(process.pid)
        assert not left, left
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if process.poll() is None:
            process.wait(timeout=10)
