"""What a finished pair leaves behind: the image, its loss log as CSV and as a plot, and meta.json."""

from __future__ import annotations

import csv
import io
import math
import threading

from PIL import Image, ImageDraw, ImageFont

from stylecore import weights as weights_mod
from stylecore.engine import IterationRecord, load_weights
from stylecore.options import StyleOptions
from stylecore.tracking import Snapshot

from . import storage

LOSS_COLUMNS = ("iteration", "content", "style", "tv", "total", "scale", "seconds")  # wall clock last


def losses_csv(history: list[IterationRecord]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LOSS_COLUMNS)
    for r in history:
        writer.writerow([r.iteration, f"{r.content:.6g}", f"{r.style:.6g}", f"{r.tv:.6g}", f"{r.total:.6g}", r.scale, f"{r.seconds:.4f}"])
    return buffer.getvalue().encode()


SNAPSHOTS = "snapshots"  # the folder of a pair's snapshots, beside its outputs


def snapshot_name(snapshot: Snapshot) -> str:
    """snapshots/iter-0100.png: numbered like the rows of losses.csv, across scales."""
    return f"{SNAPSHOTS}/iter-{snapshot.iteration:04d}.png"


SERIES = (("total", (31, 119, 180), 2), ("content", (255, 127, 14), 1), ("style", (44, 160, 44), 1), ("tv", (214, 39, 40), 1))


def losses_png(history: list[IterationRecord], title: str = "", size: tuple[int, int] = (560, 320)) -> bytes:
    """The four loss curves on a log scale, drawn with Pillow.

    A plotting library would take 40-140 ms a chart; a pair of a large batch of small images can
    optimise in less. This takes 7-10 ms, most of it compressing the PNG.
    """
    width, height = size
    left, right, top, bottom = 70, 14, 30, 42
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    plot_w, plot_h = width - left - right, height - top - bottom

    values = [v for r in history for name, _, _ in SERIES if math.isfinite(v := getattr(r, name)) and v > 0]
    high = math.ceil(math.log10(max(values))) if values else 1
    low = math.floor(math.log10(min(values))) if values else 0
    low = min(max(low, high - 8), high - 1)  # eight decades at most: a zero start would flatten the rest
    last = max(len(history), 2)

    def x_of(iteration: float) -> float:
        return left + (iteration - 1) / (last - 1) * plot_w

    def y_of(value: float) -> float:
        decades = math.log10(value) if value > 0 else low
        return top + (high - min(max(decades, low), high)) / (high - low) * plot_h

    step = max(1, math.ceil((high - low) / 8))
    for decade in range(low, high + 1, step):
        y = y_of(10.0**decade)
        draw.line([(left, y), (left + plot_w, y)], fill=(225, 225, 225))
        draw.text((left - 6, y), f"1e{decade:+03d}", fill="black", font=font, anchor="rm")
    for tick in _nice_ticks(last):
        x = x_of(tick)
        draw.line([(x, top), (x, top + plot_h)], fill=(235, 235, 235))
        draw.text((x, top + plot_h + 6), str(tick), fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for name, colour, line_width in SERIES:
        points = [(x_of(r.iteration), y_of(getattr(r, name))) for r in history]
        if len(points) == 1:
            points = points * 2
        draw.line(points, fill=colour, width=line_width, joint="curve")
    legend_x, legend_y = left + plot_w - 84, top + 8
    draw.rectangle([legend_x - 6, legend_y - 4, legend_x + 76, legend_y + 4 + 16 * len(SERIES)], fill="white", outline=(200, 200, 200))
    for row, (name, colour, line_width) in enumerate(SERIES):
        y = legend_y + 8 + 16 * row
        draw.line([(legend_x, y), (legend_x + 20, y)], fill=colour, width=line_width + 1)
        draw.text((legend_x + 26, y), name, fill="black", font=font, anchor="lm")
    draw.text((left + plot_w / 2, 8), title, fill="black", font=font, anchor="mt")
    draw.text((left + plot_w / 2, height - 6), "iteration", fill="black", font=font, anchor="mb")
    label = Image.new("RGB", (40, 16), "white")
    ImageDraw.Draw(label).text((20, 8), "loss", fill="black", font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (4, top + plot_h // 2 - 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _nice_ticks(last: int, count: int = 6) -> list[int]:
    raw = max(1.0, (last - 1) / count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(1, int(step))
    return [1] + list(range(step, last + 1, step)) if step > 1 else list(range(1, last + 1))


_remote_weights: dict[tuple, weights_mod.LoadedWeights] = {}
_remote_lock = threading.Lock()


def weights_for(options: StyleOptions) -> weights_mod.LoadedWeights:
    """Weights named by a local path or a storage URI, or the model's default; read once per process
    (a remote file is read again only when its ETag or size changes)."""
    if not (options.weights and storage.is_remote(options.weights)):
        return load_weights(options)
    info = storage.info(options.weights)
    key = (options.weights, info.get("ETag") or info.get("etag"), info.get("size"))
    with _remote_lock:
        if key not in _remote_weights:
            _remote_weights[key] = weights_mod.load_weights_bytes(storage.read_bytes(options.weights), options.weights)
        return _remote_weights[key].with_preprocessing(options.preprocessing)
