"""Alerts: a Prefect automation that posts to the operator's webhook when a stylize run fails, crashes or is late.

The automation is defined here, in code, and created (or brought up to date, never duplicated) on the server
`PREFECT_API_URL` names by three things: `stylize alerts install`, `stylize serve`, and the build step of
deploy/prefect.yaml, so `prefect deploy` creates it. The webhook is a Prefect `Webhook` block named
`stylize-alerts` whose URL the operator sets (`--webhook URL` or `STYLIZE_ALERTS_WEBHOOK`; the URL is kept as a
secret). Without a URL and without that block nothing is created and nothing is sent.

The server's triggers and actions services (on in every `prefect server start`) evaluate the automation: when a
flow run of stylize-manifest or stylize-retry-failed enters Failed, Crashed, TimedOut or Bad input, or its
scheduled start passes and the server marks it Late, the server POSTs one JSON object to the URL: the run's name
and state, its state message (for a run with failed pairs: how many, their ids and the report's URI), the flow,
the deployment, the parameters and a dashboard link, plus `text`, all of it in one line (for Slack-like hooks).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

NAME = "stylize-alerts"  # the automation's and the webhook block's name
WEBHOOK_ENV = "STYLIZE_ALERTS_WEBHOOK"
FLOWS = ("stylize-manifest", "stylize-retry-failed")  # the @flow names in flows/pipeline.py
# Failed-type states (Failed, TimedOut and the flows' own Bad input), Crashed, and Late (the server marks a
# scheduled run Late once its start is PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS past, 15 s by default).
# A flow run's event is named after its state's name, so each name is listed.
STATES = ("Failed", "Crashed", "TimedOut", "Bad input", "Late")

# Jinja, rendered by the server with the flow run, flow and deployment of the event; every value goes through
# tojson, so a message with quotes or newlines stays valid JSON.
PAYLOAD = """\
{%- set state = flow_run.state.name -%}
{%- set message = flow_run.state.message or (("not started; it was due at " ~ flow_run.expected_start_time) if state == "Late" else "") -%}
{%- set source = flow.name ~ (("/" ~ deployment.name) if deployment.name else "") -%}
{
  "text": {{ ("stylize: " ~ source ~ " run " ~ flow_run.name ~ " " ~ state ~ ((": " ~ message) if message else "") ~ ((" " ~ (flow_run|ui_url)) if flow_run|ui_url else "")) | tojson }},
  "flow_run": {{ flow_run.name | tojson }},
  "state": {{ state | tojson }},
  "message": {{ message | tojson }},
  "flow": {{ flow.name | tojson }},
  "deployment": {{ (deployment.name or none) | tojson }},
  "parameters": {{ (flow_run.parameters or {}) | tojson }},
  "expected_start_time": {{ ((flow_run.expected_start_time | string) if flow_run.expected_start_time else none) | tojson }},
  "flow_run_id": {{ flow_run.id | string | tojson }},
  "url": {{ (flow_run|ui_url or none) | tojson }}
}"""


class AlertsError(Exception):
    """A setup problem the operator fixes: printed as one line, exit 2."""


@dataclass
class Installed:
    automation_id: str
    created: bool  # False: an automation of this name was brought up to date
    webhook: str  # the URL, shortened to scheme://host/… for printing


def automation(block_document_id) -> Any:
    """The automation, as this repository defines it, sending through the webhook block with this id."""
    from prefect.automations import AutomationCore, CallWebhook, EventTrigger, Posture

    return AutomationCore(
        name=NAME,
        description=(
            "stylize: POST to the webhook block 'stylize-alerts' when a stylize-manifest or stylize-retry-failed "
            "flow run ends Failed, Crashed, TimedOut or Bad input, or a scheduled one is Late "
            "(defined in flows/alerts.py; created by `stylize alerts install`, `stylize serve` and `prefect deploy`)"
        ),
        enabled=True,
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in STATES},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[CallWebhook(block_document_id=block_document_id, payload=PAYLOAD)],
    )


def shown(url: str) -> str:
    """A webhook URL as printed: its path and query often hold a token, so only the scheme and host."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}/…"


def _check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlertsError(f"webhook: {shown(url) if parts.hostname else repr(url)} is not an http:// or https:// URL")
    return url.strip()


def _configured_server() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _server() -> str:
    url = _configured_server()
    if not url:
        raise AlertsError(
            "alerts live on a Prefect server: set PREFECT_API_URL (stylize run's temporary server keeps no automations)"
        )
    return url


def _block(client, include_secrets: bool = False) -> Any | None:
    """The webhook block's document, or None."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_block_document_by_name(NAME, block_type_slug="webhook", include_secrets=include_secrets)
    except ObjectNotFound:
        return None


def install(webhook: str | None = None, required: bool = True) -> Installed | None:
    """Save the webhook block (when a URL is given here or in STYLIZE_ALERTS_WEBHOOK) and create or update the
    automation. With no URL: an existing block is used; without one nothing is created and None is returned
    (or, where `required`, AlertsError)."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    url = webhook or os.environ.get(WEBHOOK_ENV) or None
    if url is not None:
        url = _check_url(url)
    if url is None and not required and not _configured_server():
        return None  # the temporary server: no alerts, and nothing to ask
    _server()
    if url is not None:
        Webhook(url=url, method="POST", headers={"Content-Type": "application/json"}).save(NAME, overwrite=True)
    with get_client(sync_client=True) as client:
        block = _block(client, include_secrets=url is None)
        if block is None:
            if required:
                raise AlertsError(f"no webhook: pass --webhook URL or set {WEBHOOK_ENV} (the webhook block '{NAME}' does not exist)")
            return None
        url = url or str(block.data.get("url", ""))
        wanted = automation(block.id)
        existing = client.read_automations_by_name(NAME)
        if existing:
            keep, *extra = existing
            wanted.enabled = keep.enabled  # an operator's pause outlives a re-deploy
            client.update_automation(keep.id, wanted)
            for duplicate in extra:  # made by hand, or by two installs at once
                client.delete_automation(duplicate.id)
            return Installed(str(keep.id), False, shown(url))
        return Installed(str(client.create_automation(wanted)), True, shown(url))


def remove() -> tuple[int, bool]:
    """Delete the automation and the webhook block: (automations deleted, block deleted)."""
    from prefect.client.orchestration import get_client

    _server()
    with get_client(sync_client=True) as client:
        automations = client.read_automations_by_name(NAME)
        for found in automations:
            client.delete_automation(found.id)
        block = _block(client)
        if block is not None:
            client.delete_block_document(block.id)
    return len(automations), block is not None


def send_test() -> tuple[str, int]:
    """POST a test message through the webhook block, from this host: (URL shown, HTTP status)."""
    from prefect.blocks.webhook import Webhook
    from prefect.utilities.asyncutils import run_coro_as_sync

    _server()
    try:
        block = Webhook.load(NAME)
    except ValueError:
        raise AlertsError(f"no webhook block '{NAME}': run stylize alerts install --webhook URL first") from None
    text = "stylize: a test of the alerts webhook (stylize alerts test)"
    payload = {"text": text, "flow_run": None, "state": "Test", "message": text, "flow": None, "deployment": None}  # a real one's keys
    response = run_coro_as_sync(block.call(payload=payload))
    return shown(block.url.get_secret_value()), response.status_code


def describe(installed: Installed) -> str:
    verb = "created" if installed.created else "updated"
    return (
        f"alerts: automation '{NAME}' {verb}: runs of {', '.join(FLOWS)} that end {', '.join(STATES[:-1])} "
        f"or are Late → webhook {installed.webhook}"
    )


def on_serve(webhook: str | None) -> bool:
    """`stylize serve`: install the alerts when a webhook is given or saved before (one line on stdout), nothing
    otherwise; False after one line on stderr when that fails."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        installed = install(webhook, required=False)
    except AlertsError as exc:
        print(f"stylize: error: {exc}", file=sys.stderr)
        return False
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        print(f"stylize: error: alerts: the Prefect server at {_configured_server()} did not answer ({type(exc).__name__}: {exc})", file=sys.stderr)
        return False
    if installed:
        print(describe(installed), flush=True)
    return True


def install_on_deploy(webhook: str | None = None) -> dict:
    """The build step of deploy/prefect.yaml: `prefect deploy` installs the alerts when STYLIZE_ALERTS_WEBHOOK is
    set or the webhook block exists; otherwise it does nothing."""
    installed = install(webhook or None, required=False)
    print(describe(installed) if installed else f"alerts: none (no {WEBHOOK_ENV} and no webhook block '{NAME}')", file=sys.stderr)
    return {}


# --- the `stylize alerts` command --------------------------------------------------------------------


def cmd_alerts(args) -> int:
    """install | remove | test; every problem is one line on stderr and exit 2."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        if args.alerts_command == "install":
            print(describe(install(args.webhook)))
        elif args.alerts_command == "remove":
            automations, block = remove()
            print(f"alerts: {automations} automation(s) '{NAME}' deleted" + (f", webhook block '{NAME}' deleted" if block else ""))
        else:
            where, status = send_test()
            print(f"alerts: test message sent to {where}: HTTP {status}")
            return 0 if status < 400 else 1
    except AlertsError as exc:
        print(f"stylize: error: {exc}", file=sys.stderr)
        return 2
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        print(f"stylize: error: alerts: the Prefect server at {_configured_server()} or the webhook did not answer ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    return 0


def register(commands) -> None:
    alerts = commands.add_parser("alerts", help="a webhook notified when a run fails, crashes or is late (a Prefect automation)")
    actions = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    install_ = actions.add_parser("install", help=f"save the webhook block and create or update the automation '{NAME}'")
    install_.add_argument("--webhook", metavar="URL", help=f"the URL to POST to [default: {WEBHOOK_ENV}, else the block saved before]")
    actions.add_parser("remove", help="delete the automation and the webhook block")
    actions.add_parser("test", help="POST a test message through the webhook block, from this host")
    alerts.set_defaults(handler=cmd_alerts)
