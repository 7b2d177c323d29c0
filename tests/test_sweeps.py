"""Sweeps as an artist meets them: a manifest line that runs every combination, and one grid to choose from."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from flows import report

from . import images as fixtures

GRID_TOP = 4 + report.THUMB + 8 + report.LABEL_H  # the sweep's heading: its id, content and style
COLUMNS_H = 12 + 6  # one line of column labels: one option across


def cell(sheet: Image.Image, top: int, row: int, column: int) -> Image.Image:
    left, top = report.ROW_LABEL_W + column * (report.THUMB + 8), top + row * (report.THUMB + 8)
    return sheet.crop((left, top, left + report.THUMB, top + report.THUMB))


def thumb_cell(uri: str) -> Image.Image:
    """What the sheet shows for an image: its thumbnail centred on the sheet's background."""
    thumb = report._thumb(uri)
    square = Image.new("RGB", (report.THUMB, report.THUMB), (250, 250, 250))
    square.paste(thumb, ((report.THUMB - thumb.width) // 2, (report.THUMB - thumb.height) // 2))
    return square


def test_a_sweep_is_one_grid_of_results_labelled_by_value(tmp_path):
    content = fixtures.write_sample(tmp_path, "tubingen.jpg", 64)
    style = fixtures.write_sample(tmp_path, "starry_night.jpg", 64)
    results = ["the_scream.jpg", "composition_vii.jpg", "astronaut", "chelsea", "camera", "coffee"]
    pairs, sweeps = [], {}
    for index, (strength, tv) in enumerate((s, t) for s in ("0.5", "1", "2") for t in ("0.01", "0.1")):
        pair_id = f"cup-style_strength={strength}-tv_weight={tv}"
        image = fixtures.write_sample(tmp_path / "out", results[index], 64)
        status = "failed" if index == 3 else "completed"
        pairs.append({"id": pair_id, "status": status, "content": str(content), "style": str(style), "outputs": {"image": str(image)}})
        sweeps[pair_id] = ("cup", (("style_strength", strength), ("tv_weight", tv)))

    sheet = Image.open(io.BytesIO(report.contact_sheet(pairs, sweeps))).convert("RGB")
    grid_h = GRID_TOP + COLUMNS_H + 3 * (report.THUMB + 8)
    assert sheet.size == (3 * (report.THUMB + 8) + 8, grid_h + 8 - 4)  # no wider than a plain sheet, three rows tall
    for index, pair in enumerate(pairs):  # rows: style_strength's values; columns: tv_weight's
        shown = cell(sheet, GRID_TOP + COLUMNS_H, index // 2, index % 2)
        if pair["status"] == "failed":
            assert shown.getpixel((80, 80)) == (225, 225, 225)
        else:
            assert shown.tobytes() == thumb_cell(pair["outputs"]["image"]).tobytes(), pair["id"]
    heading = sheet.crop((8, 4 + report.LABEL_H, 8 + report.THUMB, 4 + report.LABEL_H + report.THUMB))
    assert heading.tobytes() == thumb_cell(str(content)).tobytes()  # the sweep's content once, above its grid

    # A pair outside any sweep keeps its own row (content | style | result) above the grid, as it always had.
    plain = {**pairs[0], "id": "plain"}
    both = Image.open(io.BytesIO(report.contact_sheet([plain, *pairs], sweeps)))
    assert both.height == sheet.height + report.THUMB + report.LABEL_H + 8
    alone = Image.open(io.BytesIO(report.contact_sheet([plain])))
    assert both.crop((0, 0, alone.width, alone.height - 8)).tobytes() == alone.convert("RGB").crop((0, 0, alone.width, alone.height - 8)).tobytes()


def test_one_swept_option_is_one_row_and_a_long_one_wraps(tmp_path):
    content = fixtures.write_sample(tmp_path, "tubingen.jpg", 48)
    seeds = range(report.MAX_GRID_COLUMNS + 2)
    pairs = [
        {"id": f"cup-seed={seed}", "status": "completed", "content": str(content), "style": str(content), "outputs": {"image": str(content)}}
        for seed in seeds
    ]
    sweeps = {p["id"]: ("cup", (("seed", str(seed)),)) for p, seed in zip(pairs, seeds)}
    sheet = Image.open(io.BytesIO(report.contact_sheet(pairs, sweeps)))
    assert sheet.width == report.ROW_LABEL_W + report.MAX_GRID_COLUMNS * (report.THUMB + 8) + 8
    assert sheet.height == GRID_TOP + 2 * (COLUMNS_H + report.THUMB + 8) + 8 - 4  # a row of 8, then a row of 2


@pytest.mark.slow
def test_a_swept_manifest_runs_every_combination_and_lays_them_out_as_a_grid(tmp_path, squeezenet_weights, prefect_api):
    from .test_pipeline import run_cli

    fixtures.write_sample(tmp_path / "photos", "tubingen.jpg", 64)
    fixtures.write_sample(tmp_path / "styles", "starry_night.jpg", 64)
    (tmp_path / "job.yaml").write_text(
        f"output: out\nretry_delay_seconds: 0\n"
        f"defaults: {{model: squeezenet1_1, weights: {squeezenet_weights}, size: 32, iterations: 2, precision: fp32}}\n"
        "pairs:\n"
        "  - content: photos/tubingen.png\n    style: styles/starry_night.png\n"
        "    sweep: {style_strength: [0.5, 2], tv_weight: [0.01, 0.1]}\n"
    )
    code, out, err = run_cli("run", str(tmp_path / "job.yaml"))
    assert code == 0, err
    assert "4 completed, 0 skipped, 0 failed" in out
    ids = [f"tubingen-starry_night-style_strength={s}-tv_weight={t}" for s in ("0.5", "2") for t in ("0.01", "0.1")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["_runs", *ids])
    metas = {i: json.loads((tmp_path / "out" / i / "meta.json").read_text()) for i in ids}
    assert [(m["options"]["style_strength"], m["options"]["tv_weight"]) for m in metas.values()] == [(0.5, 0.01), (0.5, 0.1), (2, 0.01), (2, 0.1)]
    weak, strong = metas[ids[0]]["resolved"]["style_weights"], metas[ids[2]]["resolved"]["style_weights"]
    assert strong == [4 * w for w in weak]
    firsts = {i: next(csv.DictReader(open(tmp_path / "out" / i / "losses.csv"))) for i in ids}
    assert float(firsts[ids[2]]["style"]) == pytest.approx(4 * float(firsts[ids[0]]["style"]), rel=1e-5)  # at the content image

    (run_dir,) = (tmp_path / "out" / "_runs").iterdir()
    assert [p["id"] for p in json.loads((run_dir / "report.json").read_text())["pairs"]] == ids
    sheet = Image.open(run_dir / "contact_sheet.png").convert("RGB")
    assert sheet.height == GRID_TOP + COLUMNS_H + 2 * (report.THUMB + 8) + 8 - 4
    for index, pair_id in enumerate(ids):
        shown = cell(sheet, GRID_TOP + COLUMNS_H, index // 2, index % 2)
        assert shown.tobytes() == thumb_cell(str(tmp_path / "out" / pair_id / "stylized.png")).tobytes(), pair_id
