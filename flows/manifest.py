"""Manifests: a YAML file of content/style pairs, validated once, expanded into `PairSpec`s.

Every problem is collected and reported together, each as one line naming the
file, the line, the field and the offending value, so an operator fixes a
manifest in one pass instead of one error per run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stylecore.errors import StyleError
from stylecore.options import StyleOptions

from . import storage
from .timeouts import STALL_SECONDS

MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB: thousands of pairs fit; more is a mistake or an attack
MAX_YAML_NODES = 200_000  # nodes after expanding aliases (a "billion laughs" expands to far more)
MAX_YAML_DEPTH = 64  # nesting levels; a real manifest has under 10, hundreds would exhaust the parser's stack
MAX_GLOB_MATCHES = 10_000  # files one glob may match (`/**/*` would otherwise name the whole disk)
MAX_PAIRS = 50_000  # pairs one manifest may expand to; more is one manifest too many
MAX_BATCH_SIZE = 16  # the flow keeps two batches' worth of pair tasks in flight per device
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
PAIR_KEYS = ("id", "content", "style", "sweep")


class BadManifest(StyleError):
    """A manifest that cannot be run; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class PairEntry(BaseModel):
    """One `pairs:` item: inputs (paths, globs or lists of them) plus per-pair option overrides."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    content: str | list[str]
    style: str | list[str] | dict[str, float] = Field(
        description="An image, a glob, a list of them (one pair per style), or a blend {image: weight, ...}."
    )
    sweep: dict[str, Any] | None = Field(
        None, description="Options to sweep, {option: [values]}: one pair per combination, ids naming the values."
    )

    @field_validator("id")
    @classmethod
    def _id_is_safe(cls, value):
        if value is not None and not ID_PATTERN.match(value):
            raise ValueError("must be 1-128 of [a-z0-9._-], not starting with '.', '_' or '-' (it names a folder)")
        return value

    @field_validator("content", "style")
    @classmethod
    def _not_empty(cls, value):
        if isinstance(value, (list, dict)) and not value:
            raise ValueError("must name at least one image")
        if isinstance(value, str) and not value.strip():
            raise ValueError("must name an image")
        if isinstance(value, dict):
            for image, weight in value.items():
                if not math.isfinite(weight) or weight <= 0:
                    raise ValueError(f"blend weight of {image!r} must be a positive number (got {weight!r})")
                if storage.has_magic(image):
                    raise ValueError(f"a blend names images, not globs (got {image!r})")
        return value

    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ManifestSettings(BaseModel):
    """Everything in a manifest but its pairs (validated apart, so one bad pair hides no other problem)."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(description="Local folder or s3://bucket/prefix; relative paths resolve against the manifest.")
    name: str | None = Field(None, description="Run name prefix; default: the manifest's file name.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Any StyleOptions field, for every pair.")
    retries: int = Field(2, ge=0, le=20, description="Retries of a pair after a transient failure (storage, network, CUDA OOM).")
    retry_delay_seconds: list[float] = Field(
        default_factory=lambda: [2.0, 10.0, 30.0], description="Backoff between retries; the last value repeats."
    )
    stall_seconds: float = Field(
        STALL_SECONDS, ge=1, le=86400,
        description="The least time a batch may go without an iteration before it is timed out and retried; "
        "more where its planned iterations at its measured speed take longer (a third of that).",
    )
    batch_size: int | Literal["auto"] = Field(
        "auto", description="Pairs of one output size optimised together on a device; auto: as many as memory fits (at most 8)."
    )
    memory_limit_gb: float | None = Field(
        None, gt=0, le=4096, description="Memory to plan batches and tiles for, per device; default: what the device has free."
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BATCH_SIZE):
            return value
        raise ValueError(f"must be auto or a whole number from 1 to {MAX_BATCH_SIZE}")

    @field_validator("retry_delay_seconds", mode="before")
    @classmethod
    def _delays(cls, value):
        value = [value] if isinstance(value, (int, float)) else value
        if isinstance(value, list) and any(not isinstance(v, (int, float)) or v < 0 or v != v or v > 3600 for v in value):
            raise ValueError("must be numbers of seconds between 0 and 3600")
        return value


class Manifest(ManifestSettings):
    pairs: list[PairEntry] = Field(min_length=1)


@dataclass(frozen=True)
class PairSpec:
    id: str
    content: str
    style: str  # the style, or the first of a blend
    options: StyleOptions
    output: str  # <manifest output>/<id>
    blend: tuple[tuple[str, float], ...] = ()  # (style, weight) for every style of a blend
    sweep: tuple[tuple[str, str], ...] = ()  # a sweep member's (option, value as its id names it)
    sweep_of: str | None = None  # the id the pair has without its sweep: one grid on the contact sheet

    @property
    def styles(self) -> tuple[tuple[str, float], ...]:
        return self.blend or ((self.style, 1.0),)

    def uri(self, name: str) -> str:
        return storage.join(self.output, name)


@dataclass(frozen=True)
class LoadedManifest:
    uri: str
    manifest: Manifest
    output: str
    pairs: list[PairSpec]

    @property
    def name(self) -> str:
        return self.manifest.name or stem(self.uri)


def stem(uri: str) -> str:
    return slug(PurePosixPath(uri.rstrip("/").rsplit("/", 1)[-1]).stem) or "manifest"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:60]


# --- YAML with line numbers -------------------------------------------------------------------------


def _line_index(node: yaml.Node, path: tuple = (), lines: dict | None = None, budget: list | None = None) -> dict:
    """Map each key path to its 1-based line; counts nodes through aliases to stop alias bombs, and
    levels to stop nesting deeper than anything but an attack."""
    lines = {} if lines is None else lines
    budget = [MAX_YAML_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise BadManifest([f"more than {MAX_YAML_NODES:,} YAML nodes once aliases are expanded (an alias bomb?)"])
    if len(path) > MAX_YAML_DEPTH:
        raise BadManifest([f"{node.start_mark.line + 1}: YAML nested more than {MAX_YAML_DEPTH} levels deep"])
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (getattr(key, "value", None),)
            lines.setdefault(child, key.start_mark.line + 1)
            _line_index(value, child, lines, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_index(item, path + (index,), lines, budget)
    return lines


def parse_yaml(text: str, where: str) -> tuple[Any, dict]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            raise BadManifest([f"{where}: the file is empty"])
        lines = _line_index(node)
        data = yaml.safe_load(text)
    except BadManifest as exc:
        raise BadManifest([p if p.startswith(where) else f"{where}:{p}" if p[:1].isdigit() else f"{where}: {p}" for p in exc.problems]) from None
    except RecursionError:  # the YAML parser recurses once per level: hundreds of levels exhaust the stack
        raise BadManifest([f"{where}: YAML nested more than {MAX_YAML_DEPTH} levels deep"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadManifest([f"{where}{at}: not valid YAML: {problem}"]) from None
    return data, lines


def _where(file: str, lines: dict, loc: tuple) -> str:
    for cut in range(len(loc), -1, -1):
        if tuple(loc[:cut]) in lines:
            return f"{file}:{lines[tuple(loc[:cut])]}"
    return file


def _field(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "manifest"


def _describe(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _problems_from(exc: ValidationError, file: str, lines: dict, prefix: tuple = ()) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = prefix + tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(Manifest.model_fields) if len(loc) == 1 else ", ".join((*PAIR_KEYS, *StyleOptions.model_fields))
            message = f"unknown key; allowed: {allowed}"
        value = "" if isinstance(error.get("input"), (dict, list)) else f" (got {_describe(error.get('input'))})"
        problems.append(f"{_where(file, lines, loc)}: {_field(loc)}: {message}{value}")
    return problems


# --- loading and expansion -----------------------------------------------------------------------------


def read_manifest_text(uri: str) -> str:
    try:
        data = storage.read_bytes(uri, limit=MAX_MANIFEST_BYTES)
    except storage.TooLarge as exc:
        size = f"{exc.size:,} bytes" if exc.size is not None else f"more than {MAX_MANIFEST_BYTES:,} bytes"
        raise BadManifest([f"{uri}: {size} is over the manifest limit of {MAX_MANIFEST_BYTES:,}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadManifest([f"{uri}: not UTF-8 text (byte {exc.start})"]) from None


def load(uri: str, output: str | None = None, check_inputs: bool = True) -> LoadedManifest:
    """Read, validate and expand a manifest; raise `BadManifest` listing every problem."""
    uri = storage.absolute(uri)
    text = read_manifest_text(uri)
    data, lines = parse_yaml(text, uri)
    if not isinstance(data, dict):
        raise BadManifest([f"{uri}:1: manifest: expected a mapping with output, defaults and pairs (got {type(data).__name__})"])
    problems: list[str] = []
    try:
        settings = ManifestSettings.model_validate({k: v for k, v in data.items() if k != "pairs"})
    except ValidationError as exc:
        problems += _problems_from(exc, uri, lines)
        settings = None
    raw_pairs = data.get("pairs")
    entries: list[PairEntry] = []
    if not isinstance(raw_pairs, list) or not raw_pairs:
        problems.append(f"{_where(uri, lines, ('pairs',))}: pairs: must be a non-empty list of pairs (got {_describe(raw_pairs)})")
        raw_pairs = []
    for index, raw in enumerate(raw_pairs):
        try:
            entries.append(PairEntry.model_validate(raw))
        except ValidationError as exc:
            problems += _problems_from(exc, uri, lines, ("pairs", index))
            entries.append(None)

    base = storage.parent(uri)
    defaults = StyleOptions()
    default_sweep: dict[str, list] = {}
    if isinstance(data.get("defaults"), dict):  # a non-mapping was reported with the settings
        raw_defaults = dict(data["defaults"])
        default_sweep = _sweep(raw_defaults.pop("sweep", None), raw_defaults, uri, lines, ("defaults", "sweep"), problems)
        try:
            defaults = StyleOptions.model_validate(raw_defaults)
        except ValidationError as exc:
            problems += _problems_from(exc, uri, lines, ("defaults",))
        if _sweep_values_refused(defaults, default_sweep, default_sweep, uri, lines, ("defaults",), problems):
            default_sweep = {}  # said once here, not again for every pair

    if isinstance(data.get("defaults"), dict) and defaults.weights:
        _check_weights(defaults.weights, uri, lines, ("defaults", "weights"), problems, check_inputs)

    pairs: list[PairSpec] = []
    variants: list[list[tuple[tuple, StyleOptions]]] = []  # per pair in `pairs`: each sweep combination's options
    expanded = 0  # pairs once sweeps are expanded
    too_many = False
    for index, entry in enumerate(entries):
        if entry is None:
            continue
        at = ("pairs", index)
        unknown = [k for k in entry.overrides() if k not in StyleOptions.model_fields]
        for key in unknown:
            allowed = ", ".join((*PAIR_KEYS, *StyleOptions.model_fields))
            problems.append(f"{_where(uri, lines, at + (key,))}: pairs[{index}].{key}: unknown key; allowed: {allowed}")
        try:
            options = defaults.merged({k: v for k, v in entry.overrides().items() if k not in unknown})
        except ValidationError as exc:
            problems += _problems_from(exc, uri, lines, at)
            continue
        if unknown:
            continue
        if "weights" in entry.overrides() and options.weights:
            _check_weights(options.weights, uri, lines, at + ("weights",), problems, check_inputs)
        own_sweep = _sweep(entry.sweep, entry.overrides(), uri, lines, at + ("sweep",), problems)
        sweep = {k: v for k, v in default_sweep.items() if k not in entry.overrides()} | own_sweep
        if "weights" in own_sweep:
            for offset, weights in enumerate(own_sweep["weights"]):
                _check_weights(str(weights), uri, lines, at + ("sweep", "weights", offset), problems, check_inputs)
        combinations = math.prod(len(values) for values in sweep.values())
        contents = _expand(entry.content, base, uri, lines, at + ("content",), problems, check_inputs)
        if isinstance(entry.style, dict):
            blend = []
            for image, weight in entry.style.items():
                found = _expand(image, base, uri, lines, at + ("style", image), problems, check_inputs)
                blend += [(target, weight) for target in found]
            styles = [tuple(blend)] if blend else []
        else:
            styles = [((style, 1.0),) for style in _expand(entry.style, base, uri, lines, at + ("style",), problems, check_inputs)]
        if too_many:
            continue
        expanded += len(contents) * len(styles) * combinations
        if expanded > MAX_PAIRS:
            too_many = True  # said once: every later entry would only repeat it
            problems.append(
                f"{_where(uri, lines, at)}: {_field(at)}: {expanded:,} pairs so far "
                f"is over the limit of {MAX_PAIRS:,} pairs per manifest; split the manifest"
            )
            continue
        if _sweep_values_refused(options, sweep, own_sweep, uri, lines, at, problems):
            continue
        swept = _sweep_options(options, sweep, uri, lines, at, problems)
        combos = list(itertools.product(contents, styles))
        for content, style in combos:
            style_name = "-".join(slug(_name(s)) for s, _ in style)
            if entry.id and len(combos) == 1:
                pair_id = entry.id
            elif entry.id:
                pair_id = f"{entry.id}-{slug(_name(content))}-{style_name}"[:128]
            else:
                pair_id = f"{slug(_name(content))}-{style_name}"[:128]
            pairs.append(PairSpec(pair_id, content, style[0][0], options, "", style if len(style) > 1 else ()))
            variants.append(swept)

    pairs = _unique_ids(pairs, [e for e in entries if e is not None], uri, lines, problems)
    pairs = [member for pair, swept in zip(pairs, variants) for member in _sweep_members(pair, swept)]
    out = None
    if settings is not None:
        # An --output override is relative to where the user stands; the manifest's own, to the manifest.
        out = storage.absolute(output) if output else storage.resolve(base, settings.output)
        where = "--output" if output else f"{_where(uri, lines, ('output',))}: output"
        problem = _output_problem(out, check_inputs)
        if problem:
            problems.append(f"{where}: {problem}")
    if problems:
        raise BadManifest(sorted(problems, key=_line_of))
    manifest = Manifest(**settings.model_dump(), pairs=entries)
    return LoadedManifest(uri, manifest, out, [replace(p, output=storage.join(out, p.id)) for p in pairs])


def _line_of(problem: str) -> int:
    match = re.match(r"^.*?:(\d+): ", problem)
    return int(match.group(1)) if match else 0


def _name(uri: str) -> str:
    return PurePosixPath(uri.rstrip("/").rsplit("/", 1)[-1]).stem or "image"


def _output_problem(out: str, check_inputs: bool) -> str | None:
    """Why a run could not write under `out`, or None: storage this installation refuses, credentials in the
    URI, or (local, when inputs are checked) a file in the way or a folder this user may not write."""
    try:
        storage.check_uri(out)
    except StyleError as exc:
        return str(exc)
    if storage.is_remote(out) or not check_inputs:
        return None
    path = os.path.abspath(os.path.expanduser(out.removeprefix("file://")))
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path}: is a file, not a folder"
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{path}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path}: not writable ({existing} may not be written by this user)"
    return None


def _check_weights(weights: str, file, lines, loc, problems, check_inputs) -> None:
    """A weights file or URI named in the manifest: accepted storage, no credentials, and (when inputs are
    checked) a regular file under the weights limit that is there now, not at the end of a long run."""
    try:
        storage.check_uri(weights)
        if check_inputs:
            storage.check_file(weights, storage.MAX_WEIGHTS_BYTES)
    except storage.InputMissing as exc:
        if str(exc).endswith(": not found"):
            problems.append(f"{_where(file, lines, loc)}: {_field(loc)}: missing weights file {weights!r} ({storage.absolute(weights)})")
        else:
            problems.append(f"{_where(file, lines, loc)}: {_field(loc)}: {exc}")
    except StyleError as exc:
        problems.append(f"{_where(file, lines, loc)}: {_field(loc)}: {exc}")
    except OSError as exc:  # an unreachable store: say so, but as one line
        problems.append(f"{_where(file, lines, loc)}: {_field(loc)}: cannot read {storage.redact(weights)}: {exc}")


def _expand(value, base, file, lines, loc, problems, check_inputs) -> list[str]:
    items = value if isinstance(value, list) else [value]
    found: list[str] = []
    for offset, item in enumerate(items):
        here = loc + (offset,) if isinstance(value, list) else loc
        if len(found) > MAX_PAIRS:  # the pair limit is reported by the caller; stop listing
            break
        target = storage.resolve(base, item)
        try:
            storage.check_uri(target)
            if storage.has_magic(target):
                matches = storage.glob(target, limit=MAX_GLOB_MATCHES)
                if not matches:
                    problems.append(f"{_where(file, lines, here)}: {_field(here)}: glob {item!r} matches nothing")
                found += matches
            else:
                if check_inputs:
                    try:
                        storage.check_file(target, storage.MAX_IMAGE_BYTES)
                    except storage.InputMissing as exc:
                        if not str(exc).endswith(": not found"):
                            raise
                        problems.append(f"{_where(file, lines, here)}: {_field(here)}: missing input {item!r} ({target})")
                found.append(target)
        except StyleError as exc:
            problems.append(f"{_where(file, lines, here)}: {_field(here)}: {exc}")
        except OSError as exc:  # an unreachable store: say so, but as one line
            problems.append(f"{_where(file, lines, here)}: {_field(here)}: cannot list {storage.redact(target)}: {exc}")
    return found


def _sweep(raw, options: dict, file, lines, loc, problems) -> dict[str, list]:
    """A `sweep:` mapping checked for shape: options not also set beside it, each with a list of distinct values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{_where(file, lines, loc)}: {_field(loc)}: must map options to lists of values, e.g. {{style_strength: [0.5, 1, 2]}}")
        return {}
    sweep = {}
    for key, values in raw.items():
        here = loc + (str(key),)
        if key not in StyleOptions.model_fields:
            problems.append(f"{_where(file, lines, here)}: {_field(here)}: unknown option; options: {', '.join(StyleOptions.model_fields)}")
        elif key in options:
            problems.append(f"{_where(file, lines, here)}: {_field(here)}: {key} is also set beside the sweep; give one")
        elif not isinstance(values, list) or not values:
            problems.append(f"{_where(file, lines, here)}: {_field(here)}: must be a non-empty list of values (got {_describe(values)})")
        else:
            labels = [_label(value) for value in values]
            repeat = next((i for i, label in enumerate(labels) if label in labels[:i] or values[i] in values[:i]), None)
            if repeat is None:
                sweep[key] = values
            else:
                problems.append(f"{_where(file, lines, here + (repeat,))}: {_field(here + (repeat,))}: repeats {_describe(values[repeat])}")
    return sweep


def _label(value) -> str:
    """A swept value as a pair id names it: as written where it can be, else slugged (ids name folders)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "_".join(_label(v) for v in value)
    return slug(str(value)) or "x"


def _sweep_values_refused(options: StyleOptions, sweep: dict[str, list], own: dict, file, lines, at, problems) -> bool:
    """Each swept value on top of `options`, alone: one line per value StyleOptions refuses, naming the pair (or
    defaults), the option and the value. `own`: the keys swept at `at`; the others come from the defaults' sweep."""
    refused = False
    for key, values in sweep.items():
        for offset, value in enumerate(values):
            try:
                options.merged({key: value})
            except ValidationError as exc:
                refused = True
                message = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
                loc = at + ("sweep", key, offset)
                named = _field(loc) if key in own else f"{_field(at)}: defaults.sweep.{key}[{offset}]"
                problems.append(f"{_where(file, lines, loc)}: {named}: {message} (got {_describe(value)})")
    return refused


def _sweep_options(options: StyleOptions, sweep: dict[str, list], file, lines, at, problems) -> list[tuple[tuple, StyleOptions]]:
    """(labels, options) for each combination of the sweep's values, the last option varying fastest; a combination
    whose values are fine alone but not together is one line naming them."""
    variants = []
    for values in itertools.product(*sweep.values()):
        chosen = dict(zip(sweep, values))
        try:
            variants.append((tuple((key, _label(value)) for key, value in chosen.items()), options.merged(chosen)))
        except ValidationError as exc:
            named = ", ".join(f"{key}={_label(value)}" for key, value in chosen.items())
            message = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
            problems.append(f"{_where(file, lines, at + ('sweep',))}: {_field(at)}.sweep: {named}: {message}")
    return variants


def _sweep_members(pair: PairSpec, variants: list[tuple[tuple, StyleOptions]]) -> list[PairSpec]:
    """The pair itself without a sweep; else one pair per combination, `<id>-<option>=<value>-…` (an id longer than
    128 characters is cut and given a hash of the whole, so it stays unique)."""
    if len(variants) == 1 and not variants[0][0]:
        return [pair]
    members = []
    for labels, options in variants:
        pair_id = "-".join((pair.id, *(f"{key}={value}" for key, value in labels)))
        if len(pair_id) > 128:
            pair_id = f"{pair_id[:119]}-{hashlib.sha256(pair_id.encode()).hexdigest()[:8]}"
        members.append(replace(pair, id=pair_id, options=options, sweep=labels, sweep_of=pair.id))
    return members


def _unique_ids(pairs: list[PairSpec], entries: list[PairEntry], file, lines, problems) -> list[PairSpec]:
    """Explicit ids must be unique; derived ones that collide get a short hash of their inputs."""
    explicit = {e.id for e in entries if e.id}
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.id:
            if entry.id in seen:
                problems.append(
                    f"{_where(file, lines, ('pairs', index, 'id'))}: pairs[{index}].id: duplicate id {entry.id!r} (first at pairs[{seen[entry.id]}])"
                )
            seen.setdefault(entry.id, index)
    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.id] = counts.get(pair.id, 0) + 1
    unique = []
    for pair in pairs:
        if counts[pair.id] > 1 and pair.id not in explicit:
            inputs = pair.style if not pair.blend else repr(pair.blend)  # single-style ids as they always were
            digest = hashlib.sha256(f"{pair.content}\n{inputs}".encode()).hexdigest()[:8]
            pair = replace(pair, id=f"{pair.id}-{digest}"[:128])
        unique.append(pair)
    return unique


def json_schema() -> dict:
    """The manifest's JSON Schema for editors, with StyleOptions' fields spelled out for defaults and pairs."""
    schema = Manifest.model_json_schema()
    options = StyleOptions.model_json_schema()
    schema.setdefault("$defs", {}).update(options.pop("$defs", {}))
    schema["$defs"]["Sweep"] = {
        "type": "object",
        "description": "Options to sweep, {option: [values]}: one pair per combination, ids naming the values.",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            name: {"type": "array", "minItems": 1, "items": {k: v for k, v in field.items() if k not in ("default", "title")}}
            for name, field in options["properties"].items()
        },
    }
    sweep = {"$ref": "#/$defs/Sweep"}
    entry = schema["$defs"]["PairEntry"]
    entry["properties"].update(options["properties"])
    entry["properties"]["sweep"] = sweep
    entry["additionalProperties"] = False
    schema["$defs"]["StyleOptions"] = {**options, "properties": {**options["properties"], "sweep": sweep}}
    schema["properties"]["defaults"] = {
        "$ref": "#/$defs/StyleOptions", "description": "Engine options for every pair, and a sweep for every pair."
    }
    schema["title"] = "stylize manifest"
    return schema


if __name__ == "__main__":
    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
