"""losses.csv and losses.png: what every pair leaves beside its image."""

import csv
import io

from PIL import Image

from flows import outputs
from stylecore.engine import IterationRecord


def history(n=50):
    return [IterationRecord(i, 0.0 if i == 1 else 100 / i, 1000 / i, 10 + i * 0.01, 1110 / i, i * 0.1) for i in range(1, n + 1)]


def test_csv_has_the_columns_and_one_row_per_iteration():
    rows = list(csv.reader(io.StringIO(outputs.losses_csv(history()).decode())))
    assert rows[0] == ["iteration", "content", "style", "tv", "total", "scale", "seconds"]
    assert len(rows) == 51 and rows[1][:2] == ["1", "0"] and float(rows[50][2]) == 20.0


def test_png_is_a_chart_with_the_four_curves():
    image = Image.open(io.BytesIO(outputs.losses_png(history(), "pair: losses"))).convert("RGB")
    assert image.size == (560, 320)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    for _, colour, _ in outputs.SERIES:
        assert colour in colours


def test_png_copes_with_one_iteration_and_zeros():
    one = [IterationRecord(1, 0.0, 0.0, 0.0, 0.0, 0.01)]
    assert Image.open(io.BytesIO(outputs.losses_png(one))).size == (560, 320)
