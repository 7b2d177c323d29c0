"""`stylize one`: the output, its losses.csv, and one-line errors with exit code 2."""

import csv
import subprocess
import sys

import pytest
from PIL import Image

from . import images as fixtures
from .conftest import ROOT


def stylize(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=300)


def test_one_writes_the_image_and_losses_csv(tmp_path, squeezenet_weights, tubingen_bytes):
    output = tmp_path / "result" / "tubingen.png"
    content, style = fixtures.write_sample(tmp_path, "tubingen.jpg"), fixtures.write_sample(tmp_path, "starry_night.jpg")
    done = stylize(
        "one", str(content), str(style), str(output),
        "--model", "squeezenet1_1", "--weights", str(squeezenet_weights), "--size", "64", "--iterations", "12",
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(output).size == (64, 48)
    rows = list(csv.reader(open(output.parent / "losses.csv")))
    assert rows[0] == ["iteration", "content", "style", "tv", "total", "scale", "seconds"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 13))
    assert float(rows[-1][2]) < float(rows[1][2])
    assert "it/s" in done.stderr  # the progress bar
    assert "quality: style ratio " in done.stdout and "flags: none" in done.stdout
    assert sorted(p.name for p in output.parent.iterdir()) == ["losses.csv", "tubingen.png"]  # no temporaries left


def test_one_blends_styles_over_two_scales_in_tiles(tmp_path, squeezenet_weights):
    output = tmp_path / "blend.png"
    content, starry, scream = (fixtures.write_sample(tmp_path / "in", n) for n in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg"))
    done = stylize(
        "one", str(content), f"{starry}=0.6", str(output),
        "--blend", f"{scream}=0.4", "--model", "squeezenet1_1", "--weights", str(squeezenet_weights),
        "--size", "192", "--scales", "2", "--coarse-iterations", "4", "--iterations", "3", "--tile", "64",
        "--colour", "luminance", "--snapshot-every", "3", "-q",
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(output).size == (192, 144)
    assert "scales: 96×72, 192×144 in tiles of 64" in done.stdout
    snapshots = sorted((tmp_path / "snapshots").iterdir())  # numbered across scales, each at its scale's size
    assert [(p.name, Image.open(p).size) for p in snapshots] == [("iter-0003.png", (96, 72)), ("iter-0006.png", (192, 144))]
    rows = list(csv.DictReader(open(tmp_path / "losses.csv")))
    assert [r["scale"] for r in rows] == ["0"] * 4 + ["1"] * 3


@pytest.mark.parametrize(
    "args, expected",
    [
        (["missing.jpg", "{style}", "{out}"], "missing.jpg: not found"),
        (["{text}", "{style}", "{out}"], "not an image"),
        (["{good}", "{style}", "{out}", "--size", "-5"], "--size: Input should be greater than or equal to 16"),
        (["{good}", "{style}", "{out}", "--optimizer", "sgd"], "--optimizer"),
        (["{good}", "{style}", "{out}", "--tv-weight", "nan"], "--tv-weight"),
        (["{good}", "{style}", "{out}", "--model", "vgg16", "--weights", "{text}"], "not a torch weights file"),
        (["{good}", "{style}", "{out}", "--blend", "{good}=much"], "the blend weight after '=' must be a number"),
        (["{good}", "{style}=-1", "{out}"], "the blend weight must be positive"),
        (["{good}", "{style}", "{out}", "--style-size", "100", "--style-scale", "0.5"], "style_size and style_scale both set"),
        (["{good}", "{style}", "{out}", "--colour", "sepia"], "--colour"),
        (["{good}", "{style}", "{out}", "--early-stop", "2"], "--early-stop: Input should be less than 1"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, args, expected):
    files = {"good": tmp_path / "good.png", "style": tmp_path / "style.png", "text": tmp_path / "notes.txt", "out": tmp_path / "o.png"}
    files["good"].write_bytes(fixtures.rgb_png())
    files["style"].write_bytes(fixtures.jpeg())
    files["text"].write_text("just words")
    done = stylize("one", *[a.format(**{k: str(v) for k, v in files.items()}) for a in args], "--iterations", "2", "-q")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not files["out"].exists()
