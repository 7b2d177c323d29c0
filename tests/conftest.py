"""Shared test ground: the real images and weights in ../shared, and a private Prefect and weights cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STYLIZE_SHARED", ROOT.parent / "shared")) / "data"
SQUEEZENET = SHARED / "models" / "squeezenet1_1-caffe-features-rgb.pth"
IMAGES = SHARED / "images"

# Everything a test run writes stays out of the user's home: Prefect, torch hub and our weights cache.
_HOME = Path(tempfile.mkdtemp(prefix="stylize-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_HOME / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["STYLIZE_CACHE"] = str(_HOME / "stylize")
os.environ["TORCH_HOME"] = str(_HOME / "torch")


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is laid beside the checkout in CI)")
    return path


@pytest.fixture(scope="session")
def squeezenet_weights() -> Path:
    return need_shared(SQUEEZENET)


@pytest.fixture(scope="session")
def tubingen_bytes() -> bytes:
    return need_shared(IMAGES / "tubingen.jpg").read_bytes()


@pytest.fixture(scope="session")
def starry_bytes() -> bytes:
    return need_shared(IMAGES / "starry_night.jpg").read_bytes()
