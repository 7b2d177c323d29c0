"""The run report: report.json, a contact sheet, and what the dashboard shows."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from stylecore import images
from stylecore.errors import StyleError

from . import storage

THUMB = 160
MAX_SHEET_ROWS = 100
MAX_LINKED_PICTURES = 100  # pairs whose result the dashboard's report shows, through a link each


PAIR_STATUSES = ("completed", "skipped", "failed")


@dataclass(frozen=True)
class Links:
    """URLs a browser can open for the run's files (presigned on S3; none for local files, shown as paths)."""

    report: str | None = None
    contact_sheet: str | None = None
    pictures: dict[str, str] = field(default_factory=dict)  # a pair's id → its stylized.png


def links_for(report: dict) -> Links:
    """Links to report.json, the contact sheet and the first `MAX_LINKED_PICTURES` results, where storage has them."""
    made = [p for p in report["pairs"] if p["status"] != "failed" and (p.get("outputs") or {}).get("image")]
    pictures = {p["id"]: storage.shareable_url(p["outputs"]["image"]) for p in made[:MAX_LINKED_PICTURES]}
    return Links(
        storage.shareable_url(report["report"]), storage.shareable_url(report["contact_sheet"]),
        {pair: url for pair, url in pictures.items() if url},
    )


def _linked(label: str, uri: str, url: str | None) -> str:
    return f"[{label}]({url})" if url else f"`{uri}`"


class BadReport(StyleError):
    """A file given as a run report that is not one (not JSON, or not a report's shape)."""


def load_report(uri: str) -> dict:
    """A run's report.json, read with the report size limit and checked for a report's shape (run_name,
    manifest, output, pairs with id and status); `BadReport` in one line otherwise."""
    data = storage.read_bytes(uri, limit=storage.MAX_REPORT_BYTES)
    try:
        report = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadReport(f"{uri}: not a run report (not UTF-8 text, byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BadReport(f"{uri}: not a run report (not JSON: {exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise BadReport(f"{uri}: not a run report (JSON nested too deeply)") from None
    if not isinstance(report, dict):
        raise BadReport(f"{uri}: not a run report (a JSON {type(report).__name__}, not an object)")
    for key in ("run_name", "manifest", "output"):
        if not isinstance(report.get(key), str) or not report[key]:
            raise BadReport(f"{uri}: not a run report ({key!r} missing or not text)")
    pairs = report.get("pairs")
    if not isinstance(pairs, list):
        raise BadReport(f"{uri}: not a run report ('pairs' missing or not a list)")
    for index, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not isinstance(pair.get("id"), str) or pair.get("status") not in PAIR_STATUSES:
            raise BadReport(f"{uri}: not a run report (pairs[{index}] needs an id and a status of {', '.join(PAIR_STATUSES)})")
    storage.check_uri(report["manifest"])  # storage it names must be storage this installation accepts
    storage.check_uri(report["output"])
    return report


def summary_counts(pairs: list[dict]) -> dict[str, int]:
    counts = {"completed": 0, "skipped": 0, "failed": 0}
    for pair in pairs:
        counts[pair["status"]] = counts.get(pair["status"], 0) + 1
    return counts


def flagged(pairs: list[dict]) -> list[dict]:
    """Pairs whose quality figures crossed a threshold (completed now, or skipped with the flags of their last run)."""
    return [p for p in pairs if isinstance(p.get("quality"), dict) and p["quality"].get("flags")]


# what to change on a re-run of a pair with each flag (stylize retry-failed REPORT --flagged OPTION)
REMEDIES = {
    "weak-style": "--style-strength 2",  # or more --iterations
    "content-lost": "--style-strength 0.5",  # the content's say doubles against the style's
    "degenerate": "--lr 0.5",  # half L-BFGS's default step; for adam, below its 0.02
}


def remedy(pairs: list[dict]) -> str:
    """The retry option for the flag most of the flagged pairs have."""
    counts = Counter(flag for pair in flagged(pairs) for flag in pair["quality"]["flags"])
    return REMEDIES[counts.most_common(1)[0][0]]


def flagged_line(pairs: list[dict], shown: int = 10) -> str:
    """"2 flagged: a (weak-style), b (degenerate)", or "" where none is."""
    marked = flagged(pairs)
    if not marked:
        return ""
    names = ", ".join(f"{p['id']} ({', '.join(p['quality']['flags'])})" for p in marked[:shown])
    return f"{len(marked)} flagged: {names}" + (f" and {len(marked) - shown} more" if len(marked) > shown else "")


def gpu_seconds_by_device(pairs: list[dict]) -> dict[str, float]:
    """Device time per device; a batch's time is shared by its pairs, so each counts its share."""
    totals: dict[str, float] = {}
    for pair in pairs:
        if pair["status"] == "completed" and pair.get("device"):
            share = pair.get("seconds", 0.0) / max(1, pair.get("batch") or 1)
            totals[pair["device"]] = round(totals.get(pair["device"], 0.0) + share, 3)
    return totals


def to_json(report: dict) -> bytes:
    return (json.dumps(report, indent=2, sort_keys=False) + "\n").encode()


def _thumb(uri: str | None) -> Image.Image | None:
    if not uri:
        return None
    try:
        image = images.decode(storage.read_bytes(uri), uri)
    except Exception:  # a sheet is a convenience: a missing or broken picture becomes a grey cell
        return None
    scale = THUMB / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)


LABEL_H = 18
ROW_LABEL_W = 120  # a sweep grid's row labels
MAX_GRID_COLUMNS = 8  # a wider sweep grid wraps onto further rows of cells
STATUS_COLOURS = {"completed": (20, 110, 40), "skipped": (60, 60, 140), "failed": (180, 30, 30)}

Sweeps = dict[str, tuple[str, tuple[tuple[str, str], ...]]]  # pair id → (the sweep's own id, (option, value) swept)


@dataclass
class _Grid:
    """A sweep's members: rows are the first swept option's values, columns the rest's combinations (one row when
    only one option is swept)."""

    id: str
    options: tuple[str, ...]
    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], dict] = field(default_factory=dict)

    @property
    def splits(self) -> int:
        return 1 if len(self.options) > 1 else 0

    def add(self, pair: dict, values: tuple[str, ...]) -> None:
        self.cells[values[: self.splits], values[self.splits :]] = pair

    @property
    def rows(self) -> list[tuple[str, ...]]:
        return list(dict.fromkeys(row for row, _ in self.cells))

    @property
    def columns(self) -> list[tuple[str, ...]]:
        return list(dict.fromkeys(column for _, column in self.cells))

    @property
    def first(self) -> dict:
        return next(iter(self.cells.values()))


def _strips(pairs: list[dict], sweeps: Sweeps) -> list[tuple]:
    """The sheet top to bottom: ("pair", pair) rows, and for each sweep, where its first member is, a ("grid", grid)
    heading with its inputs, then ("columns", grid, columns) labels and ("cells", grid, row, columns) rows."""
    blocks, grids = [], {}
    for pair in pairs:
        if pair["id"] not in sweeps:
            blocks.append(("pair", pair))
            continue
        sweep_of, swept = sweeps[pair["id"]]
        if sweep_of not in grids:
            grids[sweep_of] = _Grid(sweep_of, tuple(option for option, _ in swept))
            blocks.append(("grid", grids[sweep_of]))
        grids[sweep_of].add(pair, tuple(value for _, value in swept))
    strips = []
    for block in blocks:
        strips.append(block)
        if block[0] == "grid":
            grid = block[1]
            columns = grid.columns
            for start in range(0, len(columns), MAX_GRID_COLUMNS):
                chunk = columns[start : start + MAX_GRID_COLUMNS]
                strips.append(("columns", grid, chunk))
                strips += [("cells", grid, row, chunk) for row in grid.rows]
    return strips


def _strip_height(strip: tuple) -> int:
    if strip[0] == "columns":
        return 12 * max(1, len(strip[1].options) - strip[1].splits) + 6
    return THUMB + 8 + (LABEL_H if strip[0] in ("pair", "grid") else 0)


def _strip_width(strip: tuple) -> int:
    if strip[0] in ("columns", "cells"):
        return ROW_LABEL_W + len(strip[-1]) * (THUMB + 8) + 8
    return 3 * (THUMB + 8) + 8


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    while len(text) > 1 and draw.textlength(text) > width:
        text = text[:-2] + "…"
    return text


def _cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, left: int, top: int, uri: str | None, failed: bool = False) -> None:
    thumb = None if failed else _thumb(uri)
    if thumb is None:
        draw.rectangle((left, top, left + THUMB, top + THUMB), fill=(225, 225, 225))
        if failed:
            draw.text((left + 6, top + 6), "failed", fill=STATUS_COLOURS["failed"])
    else:
        sheet.paste(thumb, (left + (THUMB - thumb.width) // 2, top + (THUMB - thumb.height) // 2))


def contact_sheet(pairs: list[dict], sweeps: Sweeps | None = None) -> bytes:
    """content | style | result, one row per pair; a sweep's results as one grid under its content and style,
    labelled with the swept values, so the best setting is picked at a glance. At most MAX_SHEET_ROWS rows."""
    strips, shown, rows = [], 0, 0
    for strip in _strips(pairs, sweeps or {}):
        rows += strip[0] != "columns"
        if rows > MAX_SHEET_ROWS:
            break
        strips.append(strip)
        if strip[0] == "pair":
            shown += 1
        elif strip[0] == "cells":
            shown += sum((strip[2], column) in strip[1].cells for column in strip[3])
    if strips and strips[-1][0] == "columns":
        strips.pop()
    extra = 24 if shown < len(pairs) else 0
    width = max([3 * (THUMB + 8) + 8, *(_strip_width(s) for s in strips)])
    height = sum(_strip_height(s) for s in strips) or THUMB + LABEL_H + 8
    sheet = Image.new("RGB", (width, height + 8 + extra), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    top = 4
    for strip in strips:
        kind = strip[0]
        if kind == "pair":
            pair = strip[1]
            status = pair["status"]
            draw.text((8, top + 2), f"{pair['id']}  [{status}]", fill=STATUS_COLOURS.get(status, (0, 0, 0)))
            cells = [pair.get("content"), pair.get("style"), (pair.get("outputs") or {}).get("image")]
            for col, uri in enumerate(cells):
                _cell(sheet, draw, 8 + col * (THUMB + 8), top + LABEL_H, uri, failed=col == 2 and status == "failed")
        elif kind == "grid":
            grid = strip[1]
            across = ", ".join(grid.options[grid.splits :])
            layout = f"rows: {grid.options[0]}  |  columns: {across}" if grid.splits else f"columns: {across}"
            draw.text((8, top + 2), f"{grid.id}  |  sweep  |  {layout}", fill=(0, 0, 0))
            for col, uri in enumerate((grid.first.get("content"), grid.first.get("style"))):
                _cell(sheet, draw, 8 + col * (THUMB + 8), top + LABEL_H, uri)
        elif kind == "columns":
            grid, chunk = strip[1], strip[2]
            options = grid.options[grid.splits :]
            for col, values in enumerate(chunk):
                for line, (option, value) in enumerate(zip(options, values)):
                    text = _fit(draw, f"{option}={value}", THUMB)
                    draw.text((ROW_LABEL_W + col * (THUMB + 8), top + 2 + 12 * line), text, fill=(0, 0, 0))
        else:
            grid, row, chunk = strip[1], strip[2], strip[3]
            for line, text in enumerate((grid.options[0], f"= {row[0]}") if row else ()):
                draw.text((8, top + THUMB // 2 - 12 + 12 * line), _fit(draw, text, ROW_LABEL_W - 12), fill=(0, 0, 0))
            for col, column in enumerate(chunk):
                pair = grid.cells.get((row, column))
                left = ROW_LABEL_W + col * (THUMB + 8)
                if pair is None:  # a combination this run did not have (another share's, or dropped)
                    draw.rectangle((left, top, left + THUMB, top + THUMB), outline=(200, 200, 200))
                    continue
                _cell(sheet, draw, left, top, (pair.get("outputs") or {}).get("image"), failed=pair["status"] == "failed")
        top += _strip_height(strip)
    if extra:
        draw.text((8, sheet.height - 20), f"… and {len(pairs) - shown} more pairs in report.json", fill=(0, 0, 0))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def markdown(report: dict, links: Links = Links()) -> str:
    counts = report["counts"]
    lines = [
        f"# Stylisation run `{report['run_name']}`",
        "",
        f"Manifest: `{report['manifest']}`  ",
        f"Output: `{report['output']}`  ",
        f"Report: {_linked('report.json', report['report'], links.report)}  ",
        f"Contact sheet: {_linked('contact_sheet.png', report['contact_sheet'], links.contact_sheet)}",
        "",
        f"**{counts['completed']} completed, {counts['skipped']} skipped, {counts['failed']} failed** "
        f"in {report['seconds']:.1f} s.",
        "",
    ]
    failed = [p for p in report["pairs"] if p["status"] == "failed"]
    if failed:
        lines += ["## Failed pairs", "", "| pair | reason |", "|---|---|"]
        lines += [f"| {p['id']} | {p['error']} |" for p in failed]
        lines += ["", f"Re-run them with `stylize retry-failed {report['report']}`.", ""]
    marked = flagged(report["pairs"])
    if marked:
        lines += ["## Flagged pairs", "", "| pair | flags | style ratio | content drift | image |", "|---|---|---:|---:|---|"]
        lines += [
            f"| {p['id']} | {', '.join(p['quality']['flags'])} | {_fmt(p['quality']['style_ratio'])} "
            f"| {_fmt(p['quality']['content_drift'])} | {p['quality']['degenerate'] or ''} |"
            for p in marked
        ]
        lines += [
            "", "Re-run them with the setting they need (" + "; ".join(f"{flag}: `{option}`" for flag, option in REMEDIES.items())
            + f"), e.g. `stylize retry-failed {report['report']} --flagged {remedy(marked)}`.", "",
        ]
    if report.get("device_seconds"):
        lines += ["## Device seconds", "", "| device | seconds |", "|---|---:|"]
        lines += [f"| {d} | {s:.1f} |" for d, s in report["device_seconds"].items()]
        lines += [""]
    if links.contact_sheet:
        lines += ["## Contact sheet", "", f"![contact sheet]({links.contact_sheet})", ""]
    if links.pictures:
        shown = f" (the first {len(links.pictures)})" if len(links.pictures) < sum(p["status"] != "failed" for p in report["pairs"]) else ""
        lines += [f"## Results{shown}", "", "| pair | result |", "|---|---|"]
        lines += [f"| {pair} | ![{pair}]({url}) |" for pair, url in links.pictures.items()]
    return "\n".join(lines) + "\n"


def table_rows(report: dict) -> list[dict]:
    rows = []
    for p in report["pairs"]:
        final = p.get("final") or {}
        quality = p.get("quality") or {}
        rows.append(
            {
                "pair": p["id"],
                "status": p["status"],
                "content loss": _fmt(final.get("content")),
                "style loss": _fmt(final.get("style")),
                "tv loss": _fmt(final.get("tv")),
                "style ratio": _fmt(quality.get("style_ratio")),
                "content drift": _fmt(quality.get("content_drift")),
                "flags": ", ".join(quality.get("flags") or ()),
                "seconds": f"{p.get('seconds', 0):.1f}",
                "batch": str(p.get("batch", 1)) if p["status"] == "completed" else "",
                "output or reason": p.get("error") or p.get("note") or (p.get("outputs") or {}).get("image", ""),
            }
        )
    return rows


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}"
