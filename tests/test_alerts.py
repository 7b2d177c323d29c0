"""Alerts (flows/alerts.py) on a real Prefect server: `prefect deploy` and `stylize serve` create the automation, a
run with a broken pair and a scheduled run nobody starts each POST to a receiver on 127.0.0.1, and without a
webhook nothing is created."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prefect import flow

from flows import alerts

from . import images as fixtures
from .conftest import ROOT, stop
from .test_deploy import BIN, background, prefect
from .test_pipeline import run_cli

WAIT = 60  # seconds: the server's triggers and actions services work asynchronously, usually within a second or two


# --- the payload, rendered as the server renders it (fast) -------------------------------------------------


def test_payload_is_valid_json_whatever_the_message():
    from prefect.server.events.actions import CallWebhook
    from prefect.server.schemas.core import Flow, FlowRun
    from prefect.server.schemas.states import State, StateType
    from prefect.server.utilities.user_templates import render_user_template

    CallWebhook(block_document_id=uuid.uuid4(), payload=alerts.PAYLOAD)  # the server accepts the template
    CallWebhook._register_filters_if_needed()  # ui_url, as in the server
    message = '2 of 3 pairs failed: a, b"c; report: C:\\out\\report.json\n<next line>'
    failed = FlowRun(name="job-x", flow_id=uuid.uuid4(), state=State(type=StateType.FAILED, name="Failed", message=message))
    body = json.loads(asyncio.run(render_user_template(alerts.PAYLOAD, {"flow_run": failed, "flow": Flow(name="stylize-manifest")})))
    assert body["message"] == message and body["flow_run"] == "job-x" and body["state"] == "Failed" and body["deployment"] is None
    assert body["text"] == f"stylize: stylize-manifest run job-x Failed: {message}"

    due = datetime(2026, 11, 27, 1, 0, tzinfo=timezone.utc)
    late = FlowRun(name="calm-fox", flow_id=uuid.uuid4(), expected_start_time=due, state=State(type=StateType.SCHEDULED, name="Late"))
    body = json.loads(asyncio.run(render_user_template(alerts.PAYLOAD, {"flow_run": late, "flow": Flow(name="stylize-manifest")})))
    assert body["state"] == "Late" and body["message"] == "not started; it was due at 2026-11-27 01:00:00+00:00"


def test_definition_covers_failed_crashed_and_late_runs_of_both_flows():
    trigger = alerts.automation(uuid.uuid4()).trigger
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.Late"} <= trigger.expect
    assert set(trigger.match_related["prefect.resource.name"]) == {"stylize-manifest", "stylize-retry-failed"}
    from flows.pipeline import retry_failed, stylize_manifest

    assert {stylize_manifest.name, retry_failed.name} == set(alerts.FLOWS)


# --- on a real server ----------------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1: every POST's path and JSON body, in arrival order."""

    def __init__(self):
        received: queue.Queue = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put((self.path, self.headers.get("Content-Type"), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/stylize"
        self.received = received
        self.seen: list[dict] = []
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, what: str, match, seconds: float = WAIT) -> dict:
        """The first POST whose body satisfies `match`, waiting up to `seconds` for it."""
        for body in self.seen:
            if match(body):
                return body
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                path, content_type, body = self.received.get(timeout=0.5)
            except queue.Empty:
                continue
            assert path == "/hooks/stylize" and content_type == "application/json"
            self.seen.append(body)
            if match(body):
                return body
        raise AssertionError(f"no notification {what} within {seconds} s; received: {self.seen}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def clean_alerts(prefect_api, monkeypatch):
    """No alerts on the session's server before or after the test (other tests fail runs on purpose)."""
    monkeypatch.delenv(alerts.WEBHOOK_ENV, raising=False)
    alerts.remove()
    yield
    alerts.remove()


def on_server() -> tuple[list, object]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_automations_by_name(alerts.NAME), alerts._block(client)


@flow(name="not-stylize", persist_result=False)
def failing_other_flow():
    raise ValueError("not a stylize run")


def delete_deployments(*names: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.delete_deployment(client.read_deployment_by_name(name).id)
            except ObjectNotFound:
                pass


def lay_out_broken_job(folder: Path, weights) -> Path:
    """Two pairs at 16 px, 2 iterations: one good, one whose style image is truncated."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "photo.png").write_bytes(fixtures.sample_png("tubingen.jpg", 32))
    (folder / "style.png").write_bytes(fixtures.sample_png("starry_night.jpg", 32))
    (folder / "broken.png").write_bytes(fixtures.sample_png("the_scream.jpg", 32)[:80])
    (folder / "job.yaml").write_text(
        f"output: out\nretry_delay_seconds: 0\n"
        f"defaults: {{model: squeezenet1_1, weights: {weights}, size: 16, iterations: 2}}\n"
        "pairs:\n"
        "  - {id: fine, content: photo.png, style: style.png}\n"
        "  - {id: broken-style, content: photo.png, style: broken.png}\n"
    )
    return folder / "job.yaml"


@pytest.mark.slow
def test_without_a_webhook_nothing_is_created(clean_alerts):
    assert alerts.install_on_deploy() == {}  # what `prefect deploy` runs
    assert alerts.on_serve(None) is True  # what `stylize serve` runs
    code, out, err = run_cli("alerts", "install")
    assert code == 2 and err.strip().splitlines() == [
        f"stylize: error: no webhook: pass --webhook URL or set {alerts.WEBHOOK_ENV} (the webhook block '{alerts.NAME}' does not exist)"
    ]
    with pytest.raises(alerts.AlertsError, match="'hooks.example.com/x' is not an http:// or https:// URL"):
        alerts.install("hooks.example.com/x")
    assert on_server() == ([], None)


@pytest.mark.slow
def test_prefect_deploy_installs_the_alerts_and_failed_and_late_runs_notify(clean_alerts, receiver, tmp_path, squeezenet_weights):
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    # The deploy step: with STYLIZE_ALERTS_WEBHOOK set, `prefect deploy` creates the automation.
    prefect("work-pool", "create", "stylize-local", "--type", "process", "--overwrite")
    env = {**os.environ, alerts.WEBHOOK_ENV: receiver.url}
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", "--name", "ad-hoc"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert f"automation '{alerts.NAME}' created" in said
    assert receiver.url not in said  # the URL may hold a token: only its host is printed
    automations, block = on_server()
    assert len(automations) == 1 and block is not None
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.Late"} <= automations[0].trigger.expect

    # Installing again, from the block saved before, updates the one automation; the test message arrives.
    code, out, err = run_cli("alerts", "install")
    assert code == 0 and f"automation '{alerts.NAME}' updated" in out, err
    assert [a.id for a in on_server()[0]] == [automations[0].id]
    with get_client(sync_client=True) as client:  # a pause set on the dashboard outlives a re-install
        client.pause_automation(automations[0].id)
        alerts.install()
        assert client.read_automation(automations[0].id).enabled is False
        client.resume_automation(automations[0].id)
    code, out, err = run_cli("alerts", "test")
    assert code == 0 and "HTTP 200" in out, err
    receiver.wait_for("from `stylize alerts test`", lambda b: b["state"] == "Test", seconds=5)

    try:
        # A failed run of another flow on the same server sends nothing (it fails first; checked below).
        assert failing_other_flow(return_state=True).is_failed()

        # A run with a broken pair ends Failed: the notification names the run, its failed pair and the report.
        manifest = lay_out_broken_job(tmp_path / "job", squeezenet_weights)
        code, out, err = run_cli("run", str(manifest))
        assert code == 1, err
        started = time.monotonic()
        (run_dir,) = (manifest.parent / "out" / "_runs").iterdir()
        report = json.loads((run_dir / "report.json").read_text())
        assert report["run_name"] == run_dir.name
        body = receiver.wait_for("for the failed run", lambda b: b["flow_run"] == report["run_name"])
        assert body["state"] == "Failed" and body["flow"] == "stylize-manifest" and body["deployment"] is None
        assert body["message"].startswith("1 of 2 pairs failed: broken-style; report: ")
        assert str(run_dir / "report.json") in body["message"] and "fine" not in body["message"].split(";")[0]
        assert body["parameters"]["manifest"] == str(manifest)
        assert body["text"].startswith(f"stylize: stylize-manifest run {report['run_name']} Failed: 1 of 2 pairs failed: broken-style")
        print(f"failed run: notified at most {time.monotonic() - started:.1f} s after `stylize run` exited")

        # A scheduled run that no worker starts is marked Late by the server (15 s past its start), and notifies.
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("stylize-manifest/ad-hoc")
            due = datetime.now(timezone.utc) - timedelta(hours=1)
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"manifest": str(manifest)}, state=Scheduled(scheduled_time=due)
            )
            try:
                started = time.monotonic()
                body = receiver.wait_for("for the late run", lambda b: b["flow_run"] == run.name)
                print(f"late run: notified {time.monotonic() - started:.1f} s after it was scheduled")
            finally:
                client.delete_flow_run(run.id)  # never left for a worker of another test to start
        assert body["state"] == "Late" and body["deployment"] == "ad-hoc"
        assert body["message"].startswith("not started; it was due at ") and body["text"].startswith(
            f"stylize: stylize-manifest/ad-hoc run {run.name} Late: not started"
        )
        assert [(b["flow"], b["state"]) for b in receiver.seen] == [(None, "Test"), ("stylize-manifest", "Failed"), ("stylize-manifest", "Late")]
    finally:
        delete_deployments("stylize-manifest/ad-hoc")

    code, out, err = run_cli("alerts", "remove")
    assert code == 0 and out.strip() == f"alerts: 1 automation(s) '{alerts.NAME}' deleted, webhook block '{alerts.NAME}' deleted"
    assert on_server() == ([], None)


@pytest.mark.slow
def test_stylize_serve_installs_the_alerts(clean_alerts, receiver, tmp_path):
    served = ("stylize-manifest/nightly", "stylize-manifest/ad-hoc", "stylize-retry-failed/retry-failed")
    delete_deployments(*served)  # serve and a pool are alternatives (the run book): start from none
    log = tmp_path / "serve.log"
    serve = background(str(BIN / "stylize"), "serve", "--manifest", str(tmp_path / "job.yaml"), "--alerts-webhook", receiver.url, log=log)
    try:
        deadline = time.monotonic() + 120
        while f"alerts: automation '{alerts.NAME}' created" not in log.read_text() and time.monotonic() < deadline:
            assert serve.poll() is None, log.read_text()[-2000:]
            time.sleep(1)
        automations, block = on_server()
        assert len(automations) == 1 and block is not None, log.read_text()[-2000:]
    finally:
        stop(serve)
        delete_deployments(*served)
