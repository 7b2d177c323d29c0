"""The `stylize` command: one pair, a manifest run, validation, weights, serving.

Every failure the user can fix is one line on stderr and exit code 2 (a bad
input) or 1 (a run with failed pairs); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import get_args, get_origin

from pydantic import ValidationError

from stylecore.errors import StyleError
from stylecore.options import StyleOptions

from .commands import EXIT_BAD_INPUT, EXIT_OK


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit 2."""


def _is_list(annotation) -> bool:
    return get_origin(annotation) is list or any(get_origin(a) is list for a in get_args(annotation))


def add_option_flags(parser: argparse.ArgumentParser, overriding: bool = False) -> None:
    """One flag per StyleOptions field, so the CLI can never drift from the model; `overriding`: on top of
    options given elsewhere (a manifest's), so no default is shown."""
    group = parser.add_argument_group("options to change (default: each pair's own)" if overriding else "style options (default: the model's)")
    for name, info in StyleOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = "" if info.default is None or overriding else f" [default: {info.default}]"
        metavar = "A,B,…" if _is_list(info.annotation) else name.upper()
        group.add_argument(flag, dest=f"opt_{name}", metavar=metavar, default=None, help=(info.description or "") + default)


def options_from_args(args: argparse.Namespace) -> dict:
    """The flags the user gave, as a dict for StyleOptions (lists split on commas)."""
    given = {}
    for name, info in StyleOptions.model_fields.items():
        value = getattr(args, f"opt_{name}", None)
        if value is None:
            continue
        given[name] = [v.strip() for v in value.split(",") if v.strip()] if _is_list(info.annotation) else value
    return given


def format_validation_error(exc: ValidationError, flags: bool = False) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "options"
        if flags and error["loc"]:
            field = "--" + str(error["loc"][0]).replace("_", "-")
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        parts.append(f"{field}: {error['msg']}{shown}")
    return "; ".join(parts)


def build_options(args: argparse.Namespace) -> StyleOptions:
    try:
        return StyleOptions.model_validate(options_from_args(args))
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, flags=True)) from None


# --- commands -------------------------------------------------------------------------------------


def cmd_one(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stylecore import images, stylize
    from stylecore.planning import make_plan, planned_iterations, precision_choice, resolve_device
    from stylecore.quality import assess

    from . import outputs, storage

    options = build_options(args)
    storage.check_uri(args.output)  # refused now, not after the optimisation
    content = images.load(storage.read_bytes(args.content, limit=storage.MAX_IMAGE_BYTES), options.size, name=args.content)
    styles = [
        (images.load(storage.read_bytes(uri, limit=storage.MAX_IMAGE_BYTES), options.style_longer_side(), name=uri), weight)
        for uri, weight in [_weighted(args.style), *map(_weighted, args.blend)]
    ]
    if options.weights:  # a device or FIFO given as weights would be read without end by torch
        storage.check_file(options.weights, storage.MAX_WEIGHTS_BYTES)
    loaded = outputs.weights_for(options)
    memory_limit = int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else None
    total = planned_iterations(options, *content.shape[-2:])
    device = resolve_device(options.device)
    make_plan(options, loaded.preprocessing, content.shape[-2] * content.shape[-1], device)  # bad layers: one line, now
    precision, why = precision_choice(options.precision, device, options.model)
    print(f"{options.model} on {device}, {precision}: {why}")  # stdout: stderr is for the one error line
    with tqdm(total=total, unit="it", dynamic_ncols=True, disable=args.quiet) as bar:

        def show(record):
            bar.update(1)
            bar.set_postfix_str(f"content={record.content:.3g} style={record.style:.3g} tv={record.tv:.3g} total={record.total:.4g}")

        result = stylize(content, styles, options, on_iteration=show, weights=loaded, memory_limit=memory_limit)
    storage.write_bytes(args.output, images.encode_png(result.image))
    storage.write_bytes(storage.join(storage.parent(args.output), "losses.csv"), outputs.losses_csv(result.history))
    for snapshot in result.snapshots:
        storage.write_bytes(storage.join(storage.parent(args.output), outputs.snapshot_name(snapshot)), images.encode_png(snapshot.pixels))
    final = result.final
    print(
        f"wrote {args.output} ({result.image.shape[-1]}×{result.image.shape[-2]}, {len(result.history)} iterations, "
        f"{result.seconds:.1f}s on {result.plan.device}; final content={final.content:.4g} style={final.style:.4g} tv={final.tv:.4g})"
    )
    if len(result.scales) > 1 or result.scales[-1].tile:
        steps = ", ".join(f"{s.size[0]}×{s.size[1]}" + (f" in tiles of {s.tile}" if s.tile else "") for s in result.scales)
        print(f"scales: {steps}")
    for note in result.fallbacks:
        print(f"memory: {note}")
    for stop in result.early_stops:
        print(f"early stop: scale {stop.scale} converged at iteration {stop.iteration}")
    quality = assess(result)
    drift = "-" if quality.content_drift is None else f"{quality.content_drift:.3g}"
    flags = ", ".join(quality.flags) + (f": {quality.degenerate}" if quality.degenerate else "") if quality.flags else "none"
    print(f"quality: style ratio {quality.style_ratio:.3g}, content drift {drift}; flags: {flags}")
    if result.snapshots:
        print(f"snapshots: {len(result.snapshots)} in {storage.join(storage.parent(args.output), 'snapshots')}")
    return EXIT_OK


def _weighted(text: str) -> tuple[str, float]:
    """IMAGE or IMAGE=WEIGHT (a blend weight, positive)."""
    image, sep, weight = text.rpartition("=")
    if not sep:
        return text, 1.0
    try:
        value = float(weight)
    except ValueError:
        raise UsageError(f"{text!r}: the blend weight after '=' must be a number") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{text!r}: the blend weight must be positive")
    return image, value


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from stylecore import weights

    path = weights.fetch(args.model)
    print(f"{args.model}: {path} (sha256 {weights.sha256_bytes(path.read_bytes())})")
    return EXIT_OK


def cmd_weights_show(args: argparse.Namespace) -> int:
    from stylecore import weights
    from stylecore.features import MODELS

    for name, spec in MODELS.items():
        try:
            found = weights.resolve_default(spec, allow_download=False)
            print(f"{name:15} {found.preprocessing:12} {found.source}")
        except StyleError:
            print(f"{name:15} {'-':12} missing: stylize weights fetch {name}")
    return EXIT_OK


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylize", description="Batch neural style transfer (Gatys et al.) on Prefect.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    one = commands.add_parser("one", help="stylise one pair on this machine, without Prefect")
    one.add_argument("content", metavar="CONTENT", help="content image (path or URI)")
    one.add_argument("style", metavar="STYLE", help="style image (path or URI), optionally =WEIGHT in a blend")
    one.add_argument("output", metavar="OUTPUT", help="output PNG; losses.csv is written beside it")
    one.add_argument("--blend", metavar="IMAGE=WEIGHT", action="append", default=[], help="another style to blend in (repeatable)")
    one.add_argument("--memory-limit-gb", type=float, metavar="GB", help="memory to plan tiles for; default: what the device has free")
    one.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_option_flags(one)
    one.set_defaults(handler=cmd_one)

    weights = commands.add_parser("weights", help="fetch or list feature-network weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    fetch = weights_commands.add_parser("fetch", help="download weights into the cache")
    fetch.add_argument("model", choices=["vgg16", "vgg19", "squeezenet1_1"])
    fetch.set_defaults(handler=cmd_weights_fetch)
    show = weights_commands.add_parser("list", help="where each model's weights would come from")
    show.set_defaults(handler=cmd_weights_show)

    from . import commands as pipeline_commands

    pipeline_commands.register(commands)
    return parser


def configure_environment() -> None:
    """Offline, quiet Prefect unless the user chose otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def main(argv: list[str] | None = None) -> int:
    configure_environment()
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, StyleError) as exc:
        print(f"stylize: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as exc:
        print(f"stylize: error: {format_validation_error(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"stylize: error: {where}no space left on the device (or over the disk quota)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("stylize: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
