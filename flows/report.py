"""The run report: report.json, a contact sheet, and what the dashboard shows."""

from __future__ import annotations

import io
import json

from PIL import Image, ImageDraw

from stylecore import images
from stylecore.errors import StyleError

from . import storage

THUMB = 160
MAX_SHEET_ROWS = 100


PAIR_STATUSES = ("completed", "skipped", "failed")


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


def contact_sheet(pairs: list[dict]) -> bytes:
    """content | style | result, one row per pair (the first MAX_SHEET_ROWS)."""
    shown = pairs[:MAX_SHEET_ROWS]
    label_h = 18
    width, row_h = 3 * (THUMB + 8) + 8, THUMB + label_h + 8
    extra = 24 if len(pairs) > len(shown) else 0
    sheet = Image.new("RGB", (width, max(1, len(shown)) * row_h + 8 + extra), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    for row, pair in enumerate(shown):
        top = 4 + row * row_h
        status = pair["status"]
        colour = {"completed": (20, 110, 40), "skipped": (60, 60, 140), "failed": (180, 30, 30)}.get(status, (0, 0, 0))
        draw.text((8, top + 2), f"{pair['id']}  [{status}]", fill=colour)
        cells = [pair.get("content"), pair.get("style"), (pair.get("outputs") or {}).get("image")]
        for col, uri in enumerate(cells):
            left = 8 + col * (THUMB + 8)
            box = (left, top + label_h, left + THUMB, top + label_h + THUMB)
            thumb = _thumb(uri) if not (col == 2 and status == "failed") else None
            if thumb is None:
                draw.rectangle(box, fill=(225, 225, 225))
                if col == 2 and status == "failed":
                    draw.text((left + 6, top + label_h + 6), "failed", fill=(180, 30, 30))
            else:
                sheet.paste(thumb, (left + (THUMB - thumb.width) // 2, top + label_h + (THUMB - thumb.height) // 2))
    if extra:
        draw.text((8, sheet.height - 20), f"… and {len(pairs) - len(shown)} more pairs in report.json", fill=(0, 0, 0))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def markdown(report: dict) -> str:
    counts = report["counts"]
    lines = [
        f"# Stylisation run `{report['run_name']}`",
        "",
        f"Manifest: `{report['manifest']}`  ",
        f"Output: `{report['output']}`  ",
        f"Report: `{report['report']}`  ",
        f"Contact sheet: `{report['contact_sheet']}`",
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
    if report.get("device_seconds"):
        lines += ["## Device seconds", "", "| device | seconds |", "|---|---:|"]
        lines += [f"| {d} | {s:.1f} |" for d, s in report["device_seconds"].items()]
    return "\n".join(lines) + "\n"


def table_rows(report: dict) -> list[dict]:
    rows = []
    for p in report["pairs"]:
        final = p.get("final") or {}
        rows.append(
            {
                "pair": p["id"],
                "status": p["status"],
                "content loss": _fmt(final.get("content")),
                "style loss": _fmt(final.get("style")),
                "tv loss": _fmt(final.get("tv")),
                "seconds": f"{p.get('seconds', 0):.1f}",
                "batch": str(p.get("batch", 1)) if p["status"] == "completed" else "",
                "output or reason": p.get("error") or p.get("note") or (p.get("outputs") or {}).get("image", ""),
            }
        )
    return rows


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}"
