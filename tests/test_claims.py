"""A pair's claim: live while another run that holds it is alive, dead once its holder is gone."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from flows import claims
from flows.manifest import load


def a_pair(tmp_path):
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "s.png").write_bytes(b"")
    (tmp_path / "job.yaml").write_text("output: out\npairs:\n  - {content: c.png, style: s.png}\n")
    (pair,) = load(str(tmp_path / "job.yaml")).pairs
    return pair


def running(_run: str) -> bool:
    return False


def ended(_run: str) -> bool:
    return True


def a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_another_live_run_holds_what_it_claimed(tmp_path):
    pair = a_pair(tmp_path)
    claims.take(pair, "f" * 64, "run-a", "nightly-1")
    claim = claims.holder(pair, "f" * 64, "run-b", running)
    assert claim is not None and (claim.run_name, claim.pid) == ("nightly-1", os.getpid())
    assert claims.holder(pair, "f" * 64, "run-a", running) is None  # a run's own claim never stops it
    assert claims.holder(pair, "e" * 64, "run-b", running) is None  # made from other inputs: not the same work
    assert claims.holder(pair, "f" * 64, "run-b", ended) is None  # the holder's flow run has ended


def test_a_claim_dies_with_its_process_on_this_host_and_with_time_elsewhere(tmp_path):
    pair = a_pair(tmp_path)
    claims.take(pair, "f" * 64, "run-a", "nightly-1")
    claim = claims.read(pair)
    assert not replace(claim, pid=a_dead_pid()).is_live("run-b", running)  # killed: the next run remakes its pairs
    elsewhere = replace(claim, host="another-host", pid=a_dead_pid())
    assert elsewhere.is_live("run-b", running)  # a pid means nothing on another host
    past = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    assert not replace(elsewhere, expires_at=past).is_live("run-b", running)


def test_release_removes_the_claim_and_a_broken_claim_holds_nothing(tmp_path):
    pair = a_pair(tmp_path)
    claims.take(pair, "f" * 64, "run-a", "nightly-1")
    claim_file = tmp_path / "out" / "c-s" / claims.CLAIM_NAME
    assert json.loads(claim_file.read_text())["flow_run"] == "run-a"
    claims.release(pair)
    assert not claim_file.exists()
    claims.release(pair)  # nothing to remove is fine
    claim_file.write_text("{not json")
    assert claims.holder(pair, "f" * 64, "run-b", running) is None
