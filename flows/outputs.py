"""What a finished pair leaves behind: the image, its loss log as CSV and as a plot, and meta.json."""

from __future__ import annotations

import csv
import io
import threading

from stylecore import weights as weights_mod
from stylecore.engine import IterationRecord, load_weights
from stylecore.options import StyleOptions

from . import storage

LOSS_COLUMNS = ("iteration", "content", "style", "tv", "total", "seconds")


def losses_csv(history: list[IterationRecord]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LOSS_COLUMNS)
    for r in history:
        writer.writerow([r.iteration, f"{r.content:.6g}", f"{r.style:.6g}", f"{r.tv:.6g}", f"{r.total:.6g}", f"{r.seconds:.4f}"])
    return buffer.getvalue().encode()


_MATPLOTLIB = threading.Lock()  # its text layout shares font caches: pairs on two devices must take turns


def losses_png(history: list[IterationRecord], title: str = "") -> bytes:
    """Loss curves on a log scale; the four terms on one axis so their balance is visible."""
    with _MATPLOTLIB:
        return _plot(history, title)


def _plot(history: list[IterationRecord], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.6), dpi=100)
    axes = figure.subplots()
    steps = [r.iteration for r in history]
    for name in ("total", "content", "style", "tv"):
        values = [max(getattr(r, name), 1e-12) for r in history]
        axes.plot(steps, values, label=name, linewidth=2.0 if name == "total" else 1.2)
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def weights_for(options: StyleOptions) -> weights_mod.LoadedWeights:
    """Weights named by a local path or a storage URI, or the model's default."""
    if options.weights and storage.is_remote(options.weights):
        return weights_mod.load_weights_bytes(
            storage.read_bytes(options.weights), options.weights, options.preprocessing
        )
    return load_weights(options)
