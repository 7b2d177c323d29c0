"""Stopping a run on SIGTERM or SIGINT (Ctrl-C): finish quickly, keep what finished, leave nothing behind.

`stylize run` holds `handling()` around its flow call. The first signal only sets a process-wide
event: the flow starts no new batch, each optimisation ends within one iteration (its progress
callback raises `StopRequested`), writes of batches already optimised finish, every other pair ends
"interrupted (SIGTERM)", the report is written and the flow run ends Cancelled. A second signal
exits at once, stopping Prefect's temporary server first.

Prefect's flow engine puts its own SIGTERM handler in place while a flow runs (it would crash the run
and lose the report); `taken_back()` puts ours back around the flow's body, only under `handling()`,
so a flow run that a Prefect worker or runner cancels keeps Prefect's protocol.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested = threading.Event()
_received: list[int] = []  # the signals received, in order
_handling = False  # `handling()` is active: this process's signals are ours to handle


class StopRequested(Exception):
    """A signal asked the run to stop. An `Exception`, so the lockstep engine records it as each image's
    error and lets the image's thread end (every image of the batch sees it at its next iteration)."""


def requested() -> bool:
    return _requested.is_set()


def signal_name() -> str | None:
    return signal.Signals(_received[0]).name if _received else None


def exit_code() -> int:
    """128 + the first signal's number: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + _received[0] if _received else 1


def reason() -> str:
    return f"interrupted ({signal_name()})"


def check() -> None:
    """Raise `StopRequested` once a stop has been asked for."""
    if _requested.is_set():
        raise StopRequested(reason())


def _handle(signum: int, frame) -> None:
    _received.append(signum)
    if not _requested.is_set():
        _requested.set()
        return
    # the second signal: nothing more is waited for
    print(f"stylize: {signal.Signals(signum).name} again, exiting now", file=sys.stderr, flush=True)
    stop_temporary_server()
    os._exit(128 + _received[0])


def stop_temporary_server() -> None:
    """Stop Prefect's temporary server if this process started one (Prefect also does so at exit)."""
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:
        return
    for server in list(server_module.SubprocessASGIServer._instances.values()):
        try:
            server.stop()
        except Exception:  # already gone
            pass


def start_temporary_server() -> None:
    """Start Prefect's temporary server now, if the run will use one, with SIGINT blocked in it: Ctrl-C reaches
    the whole process group, and the server must outlive it to record how the run ended. Stopped at exit
    (Prefect's atexit) with SIGTERM."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # a child inherits the mask
    try:
        SubprocessASGIServer().start()  # the instance Prefect's client uses
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def handling() -> Iterator[None]:
    """SIGTERM and SIGINT ask the run to stop while the block runs; the previous handlers come back after."""
    global _handling
    _requested.clear()
    _received.clear()
    previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
    _handling = True
    try:
        yield
    finally:
        _handling = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def taken_back() -> Iterator[None]:
    """Inside a flow under `handling()`: our handlers instead of the flow engine's while the block runs."""
    if not _handling or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
