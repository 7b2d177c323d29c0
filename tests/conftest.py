"""Shared test ground: the packaged SqueezeNet weights, real pictures from skimage.data, and a private
Prefect and weights cache. Nothing outside the checkout is read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Everything a test run writes stays out of the user's home: Prefect, torch hub and our weights cache.
_HOME = Path(tempfile.mkdtemp(prefix="stylize-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_HOME / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["STYLIZE_CACHE"] = str(_HOME / "stylize")
os.environ["TORCH_HOME"] = str(_HOME / "torch")
os.environ.pop("STYLIZE_ALERTS_WEBHOOK", None)  # an operator's webhook must never hear of the tests' failed runs


@pytest.fixture(scope="session")
def squeezenet_weights() -> Path:
    """The SqueezeNet 1.1 weights shipped in the package (stylecore/data)."""
    from stylecore import weights

    path = weights.packaged_file("squeezenet1_1")
    assert path is not None and path.is_file(), f"{path} is missing from the package"
    return path


@pytest.fixture(scope="session")
def tubingen_bytes() -> bytes:
    """The content photo (skimage's coffee, cropped to 533×400), as PNG bytes."""
    from .images import sample_png

    return sample_png("tubingen.jpg")


@pytest.fixture(scope="session")
def starry_bytes() -> bytes:
    """The style picture (skimage's immunohistochemistry), as PNG bytes."""
    from .images import sample_png

    return sample_png("starry_night.jpg")


def pytest_collection_modifyitems(config, items):
    """Tests marked `netns` run only inside the network namespace their driver test makes (tests/test_ray.py);
    there, only they run."""
    inside = os.environ.get("STYLIZE_NETNS") == "1"
    chosen = [item for item in items if (item.get_closest_marker("netns") is not None) == inside]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = chosen


# --- real servers, started and stopped by the tests --------------------------------------------------

import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, seconds: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server on 127.0.0.1 with its own SQLite home; the API URL is exported to the tests."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    log = open(home / "server.log", "w")
    process = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_http(f"{url}/health", 180, process)
        yield url
    finally:
        stop(process)
        log.close()


@pytest.fixture
def prefect_api(prefect_server, monkeypatch):
    """Point this test (and the CLI subprocesses it starts) at the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto in server mode on 127.0.0.1: a real HTTP S3 endpoint that s3fs talks to as to AWS."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL_S3=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    import boto3

    name = "stylize-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    region = os.environ["AWS_DEFAULT_REGION"]
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=region)
    extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    client.create_bucket(Bucket=name, **extra)
    import fsspec

    fsspec.filesystem("s3").invalidate_cache()
    return name
