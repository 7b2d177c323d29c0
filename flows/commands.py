"""Manifest commands: validate, run, retry-failed, demo. Registered on the `stylize` parser."""

from __future__ import annotations

import argparse
import importlib.util
import sys


EXIT_OK, EXIT_FAILED_PAIRS, EXIT_BAD_INPUT = 0, 1, 2


def _print_pairs_table(pairs) -> None:
    rows = [(p.id, p.content, p.style, str(p.options.size), str(p.options.iterations), p.options.model) for p in pairs]
    _table(("id", "content", "style", "size", "iterations", "model"), rows)


def _table(header, rows) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def cmd_validate(args: argparse.Namespace) -> int:
    from .manifest import BadManifest, load

    try:
        loaded = load(args.manifest, args.output)
    except BadManifest as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.manifest}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_pairs_table(loaded.pairs)
    print(f"\n{len(loaded.pairs)} pairs → {loaded.output}")
    return EXIT_OK


def _print_report(report: dict) -> int:
    from .report import flagged_line, remedy

    rows = []
    for p in report["pairs"]:
        final = p.get("final") or {}
        if p["status"] == "failed" or p.get("note"):
            detail = p.get("error") or p.get("note")
        else:
            detail = f"style {final.get('style', 0):.4g}  total {final.get('total', 0):.4g}"
        rows.append((p["id"], p["status"], f"{p.get('seconds', 0):.1f}", detail or ""))
    _table(("pair", "status", "seconds", "final losses / reason"), rows)
    counts = report["counts"]
    print(f"\n{counts['completed']} completed, {counts['skipped']} skipped, {counts['failed']} failed; report: {report['report']}")
    if flagged := flagged_line(report["pairs"]):
        print(f"{flagged}; re-run them with the setting they need, e.g.: stylize retry-failed {report['report']} --flagged {remedy(report['pairs'])}")
    failed = [p["id"] for p in report["pairs"] if p["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}; re-run them with: stylize retry-failed {report['report']}", file=sys.stderr)
        return EXIT_FAILED_PAIRS
    return EXIT_OK


def _run_flow(flow_fn, runner: str, devices_arg: str | None, ray_address: str | None = None, **parameters) -> int:
    from prefect.exceptions import TerminationSignal

    from . import stopping

    devices = [d.strip() for d in devices_arg.split(",") if d.strip()] if devices_arg else None
    with stopping.handling():  # a signal stops the run; Prefect stops its temporary server when main() returns
        stopping.start_temporary_server()
        try:
            state = flow_fn(**parameters, runner=runner, ray_address=ray_address, devices=devices, return_state=True)
        except TerminationSignal:  # SIGTERM while Prefect's handler was in place (outside run_pairs): the run crashed
            if not stopping.requested():
                raise
            state = None
        try:
            report = state.result(raise_on_failure=False) if state else None
        except Exception:  # a crashed flow has no report to show, only its message
            report = None
        report = getattr(report, "report", report)  # a failed or cancelled run carries its report in its exception
        report = report if isinstance(report, dict) and "pairs" in report else None
        if stopping.requested():
            where = f"report: {report['report']}" if report else "no report written"
            finished = sum(p["status"] != "failed" for p in report["pairs"]) if report else 0
            total = f" of {len(report['pairs'])}" if report else ""
            print(f"stylize: interrupted by {stopping.signal_name()}; {finished}{total} pairs finished, {where}", file=sys.stderr)
            return stopping.exit_code()
    if report is None:
        from .tasks import BAD_INPUT

        print(f"stylize: error: {state.message or state.name}", file=sys.stderr)
        return EXIT_BAD_INPUT if state.name == BAD_INPUT else EXIT_FAILED_PAIRS
    return _print_report(report)


def cmd_run(args: argparse.Namespace) -> int:
    from .manifest import BadManifest, load
    from .pipeline import stylize_manifest

    try:
        load(args.manifest, args.output)  # fail fast, before any server starts
    except BadManifest as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.runner == "ray" and importlib.util.find_spec("prefect_ray") is None:
        print("stylize: error: runner 'ray' needs the ray extra: pip install 'stylize[ray]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.runner == "deployment" and not args.shard_deployment:
        print("stylize: error: runner 'deployment' needs --shard-deployment (e.g. stylize-manifest/k8s-gpu)", file=sys.stderr)
        return EXIT_BAD_INPUT
    fan_out = {"shard_deployment": args.shard_deployment, "shards": args.shards} if args.runner == "deployment" else {}
    return _run_flow(
        stylize_manifest, args.runner, args.devices, args.ray_address, manifest=args.manifest, output=args.output, **fan_out
    )


def cmd_retry_failed(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from stylecore.options import StyleOptions

    from .cli import format_validation_error, options_from_args
    from .report import load_report

    load_report(args.report)  # a missing, oversized or foreign file is one line, not a flow failure
    from .pipeline import FLAGGED_NEEDS_OVERRIDES, retry_failed

    overrides = options_from_args(args)
    if args.flagged and not overrides:
        print(f"stylize: error: {FLAGGED_NEEDS_OVERRIDES}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:  # each flag's own range, before a server starts; each pair's options as a whole are checked in the flow
        StyleOptions.model_validate(overrides)
    except ValidationError as exc:
        print(f"stylize: error: {format_validation_error(exc, flags=True)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _run_flow(
        retry_failed, args.runner, args.devices, args.ray_address, report=args.report, flagged=args.flagged, overrides=overrides or None
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """manifests/demo.yaml on scikit-image's samples, fetching the model's weights the first time."""
    from pathlib import Path

    from stylecore import weights
    from stylecore.errors import WeightsMissing
    from stylecore.features import model_spec

    from . import demo_images
    from .manifest import load
    from .pipeline import stylize_manifest

    root = Path(__file__).resolve().parents[1]
    manifest = root / "manifests" / "demo.yaml"
    demo_images.export(root / "out" / "demo-inputs")
    model = load(str(manifest)).pairs[0].options.model
    try:
        weights.resolve_default(model_spec(model), allow_download=False)
    except WeightsMissing:
        print(f"fetching {model} weights (once) ...", flush=True)
        weights.fetch(model)
    print(describe_precision(model, args.devices), flush=True)
    return _run_flow(stylize_manifest, "local", args.devices, manifest=str(manifest), output=None)


def describe_precision(model: str, devices_arg: str | None) -> str:
    """Which precision a run takes and why, said once: a CPU without native bf16 runs VGG 3-5x slower."""
    from stylecore.planning import precision_choice, resolve_device

    device = resolve_device((devices_arg or "auto").split(",")[0])
    precision, why = precision_choice("auto", device, model)
    return f"{model} on {device}, {precision}: {why}"


def cmd_serve(args: argparse.Namespace) -> int:
    """The one-command alternative to a work pool on a single host: this process runs the deployments."""
    from prefect import serve

    from . import alerts
    from .pipeline import retry_failed, stylize_manifest

    if not alerts.on_serve(args.alerts_webhook):  # the alerts automation, when a webhook is set or was saved before
        return EXIT_BAD_INPUT
    nightly = stylize_manifest.to_deployment(
        name="nightly", cron=args.cron, parameters={"manifest": args.manifest}, tags=["stylize", "nightly"]
    )
    ad_hoc = stylize_manifest.to_deployment(name="ad-hoc", tags=["stylize"])
    retry = retry_failed.to_deployment(name="retry-failed", tags=["stylize", "retry"])
    serve(nightly, ad_hoc, retry, limit=args.limit)
    return EXIT_OK


def register(commands) -> None:
    validate = commands.add_parser("validate", help="check a manifest and list its expanded pairs")
    validate.add_argument("manifest", metavar="MANIFEST", help="manifest YAML (path or URI)")
    validate.add_argument("--output", help="override the manifest's output location")
    validate.set_defaults(handler=cmd_validate)

    run = commands.add_parser("run", help="stylise every pair of a manifest as a Prefect flow")
    run.add_argument("manifest", metavar="MANIFEST", help="manifest YAML (path or URI)")
    run.add_argument("--output", help="override the manifest's output location")
    _runner_flags(run, fan_out=True)
    run.add_argument("--shard-deployment", metavar="FLOW/DEPLOYMENT", help="deployment runner: the deployment each share runs as (e.g. stylize-manifest/k8s-gpu)")
    run.add_argument("--shards", type=int, metavar="N", help="deployment runner: child flow runs to spread the batches over [default: one per batch]")
    run.set_defaults(handler=cmd_run)

    from .cli import add_option_flags

    retry = commands.add_parser("retry-failed", help="re-run the failed (or flagged) pairs of a run report")
    retry.add_argument("report", metavar="REPORT_URI", help=".../_runs/<run>/report.json")
    retry.add_argument("--flagged", action="store_true", help="re-run the pairs whose quality was flagged instead; needs an option to change")
    _runner_flags(retry)
    add_option_flags(retry, overriding=True)  # e.g. --style-strength 2 on top of each pair's own options
    retry.set_defaults(handler=cmd_retry_failed)

    serve = commands.add_parser("serve", help="serve the nightly, ad-hoc and retry-failed deployments from this process")
    serve.add_argument("--manifest", required=True, help="the nightly deployment's manifest URI")
    serve.add_argument("--cron", default="0 1 * * *", help="the nightly schedule [default: 01:00 every day]")
    serve.add_argument("--limit", type=int, default=1, help="flow runs at a time in this process [default: 1]")
    serve.add_argument(
        "--alerts-webhook", metavar="URL",
        help="create or update the alerts automation, posting to URL [default: STYLIZE_ALERTS_WEBHOOK, else the webhook block saved before; neither: no alerts]",
    )
    serve.set_defaults(handler=cmd_serve)

    from . import alerts

    alerts.register(commands)

    demo = commands.add_parser("demo", help="run manifests/demo.yaml on scikit-image's sample pictures")
    demo.add_argument("--devices", help="comma-separated devices (default: every GPU, else cpu)")
    demo.set_defaults(handler=cmd_demo)


def _runner_flags(parser: argparse.ArgumentParser, fan_out: bool = False) -> None:
    choices = ["local", "ray", "deployment"] if fan_out else ["local", "ray"]
    parser.add_argument(
        "--runner", choices=choices, default="local",
        help="local: threads on this host, one batch per device at a time; ray: batches as Ray tasks, one GPU each"
        + ("; deployment: child flow runs of --shard-deployment, each batching its share" if fan_out else "") + " [default: local]",
    )
    parser.add_argument("--devices", help="local runner: comma-separated devices to lease (default: every GPU, else cpu)")
    parser.add_argument("--ray-address", help="ray runner: the cluster's address, e.g. 10.0.0.5:6379 (default: RAY_ADDRESS, else a local Ray)")
