"""Claims: a pair one run is optimising is not optimised again by another run of the same manifest.

A run claims a batch's members while it holds the batch's device, in a small file beside each
pair's outputs (`.claim.json`, never mistaken for an output), and removes it once the pair's
meta.json is written. Another run that reaches the pair meanwhile finds a live claim and leaves
the pair to its holder, reporting it skipped. A claim dies with its holder, so a killed run's
pairs are made by the next run: on the claim's own host when its process is gone, anywhere when
its flow run has ended (Prefect marks a lost pod's run Crashed), and in any case after
`CLAIM_SECONDS`. Runs on one device are serialised by its lease, so their claims never race; two
runs on different devices or hosts can both claim a pair in the moment between one's check and
its write, which costs one duplicate optimisation and nothing else.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from uuid import UUID

from prefect.client.orchestration import get_client

from stylecore.errors import StyleError

from . import storage
from .manifest import PairSpec

CLAIM_NAME = ".claim.json"
CLAIM_SECONDS = 6 * 3600  # longer than any one batch's optimisation; only a lost holder on another host waits it out


@dataclass(frozen=True)
class Claim:
    flow_run: str  # the holder's Prefect flow run: its id, and its name for the operator
    run_name: str
    fingerprint: str
    host: str
    pid: int
    expires_at: str  # ISO 8601, UTC

    def is_live(self, this_run: str, run_has_ended: Callable[[str], bool]) -> bool:
        """Whether another run still holds the pair (a claim of this very run, e.g. an earlier attempt, is not)."""
        if self.flow_run == this_run or datetime.now(timezone.utc) >= datetime.fromisoformat(self.expires_at):
            return False
        if self.host == socket.gethostname() and not _process_exists(self.pid):
            return False
        return not run_has_ended(self.flow_run)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def holder(pair: PairSpec, fingerprint: str, this_run: str, run_has_ended: Callable[[str], bool]) -> Claim | None:
    """The live claim another run holds on this pair made from these inputs, if any."""
    claim = read(pair)
    if claim is None or claim.fingerprint != fingerprint:
        return None
    return claim if claim.is_live(this_run, run_has_ended) else None


def read(pair: PairSpec) -> Claim | None:
    try:
        return Claim(**json.loads(storage.read_bytes(pair.uri(CLAIM_NAME), limit=storage.MAX_JSON_BYTES)))
    except (StyleError, ValueError, TypeError):  # absent, unreadable or not a claim: nobody holds the pair
        return None


def take(pair: PairSpec, fingerprint: str, this_run: str, run_name: str) -> None:
    expires = datetime.now(timezone.utc) + timedelta(seconds=CLAIM_SECONDS)
    claim = Claim(this_run, run_name, fingerprint, socket.gethostname(), os.getpid(), expires.isoformat())
    storage.write_bytes(pair.uri(CLAIM_NAME), json.dumps(asdict(claim)).encode())


def release(pair: PairSpec) -> None:
    storage.remove(pair.uri(CLAIM_NAME))


def flow_run_has_ended(flow_run: str) -> bool:
    """Whether the Prefect server has the run in a final state; a run it cannot tell about counts as running."""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run)).state
    except Exception:  # unreachable server, unknown run: the claim's own expiry decides
        return False
    return state is not None and state.is_final()
