"""Memory estimates made before running, and tiles for images that do not fit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from stylecore import StyleOptions, images, memory, stylize, tiling
from stylecore.features import MODELS

from .conftest import IMAGES, ROOT, need_shared

VGG = MODELS["vgg16"]
RELU5_1 = VGG.index_of("relu5_1")


@pytest.mark.parametrize("length,tile", [(100, 64), (1000, 256), (257, 128), (64, 128), (5000, 512)])
def test_tile_bounds_cover_the_image_with_pieces_of_sensible_size(length, tile):
    for offset in range(0, tile, 7):
        pieces = tiling.tile_bounds(length, tile, offset)
        assert pieces[0][0] == 0 and pieces[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))  # contiguous, no overlap, no gap
        if length > tile:
            assert all(tile // 2 <= b - a <= tile * 3 // 2 for a, b in pieces)
    if length > 2 * tile:
        assert tiling.tile_bounds(length, tile, 0) != tiling.tile_bounds(length, tile, tile // 2)  # the grid moves


def test_estimates_grow_with_pixels_batch_and_precision():
    def cost(size, dtype=torch.float32, optimizer="lbfgs"):
        return memory.estimate(VGG, RELU5_1, size, size, optimizer, dtype)

    ratio = cost(2048).per_image / cost(1024).per_image
    assert 3.8 < ratio < 4.2  # activations and optimiser state are both per pixel
    assert cost(512).total(4) - cost(512).total(1) == 3 * cost(512).per_image
    assert cost(512, torch.bfloat16).per_image < cost(512).per_image
    assert cost(512, optimizer="adam").per_image < cost(512).per_image  # L-BFGS remembers 50 steps
    assert cost(2048, torch.bfloat16).total() > 8 << 30  # a 2048² VGG optimisation is big: it is what tiles are for


def test_largest_batch_and_tile_fit_the_budget():
    one = memory.estimate(VGG, RELU5_1, 512, 512, "lbfgs", torch.float32)
    assert memory.largest_batch(one, one.total(3), wanted=8) == 3
    assert memory.largest_batch(one, one.total(1) - 1, wanted=8) == 1  # never zero: one image is tiled instead
    assert memory.largest_tile(VGG, RELU5_1, 512, 512, torch.float32, 1 << 40) == 512  # fits whole
    budget = 3 << 30
    tile = memory.largest_tile(VGG, RELU5_1, 2048, 2048, torch.float32, budget)
    assert memory.MIN_TILE <= tile < 2048 and tile % 64 == 0
    piece = tile * 3 // 2
    assert memory.estimate(VGG, RELU5_1, piece, piece, "adam", torch.float32, image_pixels=2048 * 2048).total() <= budget


def test_the_estimate_bounds_the_measured_peak():
    """The real peak of a VGG16 optimisation (random weights: same memory) against the estimate made before it."""
    script = """
import json, resource, torch
from stylecore import StyleOptions, stylize, weights
from stylecore.features import MODELS
torch.manual_seed(0)
loaded = weights.LoadedWeights(MODELS["vgg16"].build().state_dict(), "random", "caffe", "random init")
options = StyleOptions(model="vgg16", size=384, iterations=2, device="cpu", optimizer="adam")
stylize(torch.rand(1, 3, 48, 64), torch.rand(1, 3, 48, 64), options.merged({"iterations": 1}), weights=loaded)
base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
result = stylize(torch.rand(1, 3, 288, 384), torch.rand(1, 3, 288, 384), options, weights=loaded)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps({"peak": peak, "estimate": result.extra["memory"]["plan"][0]["estimate_bytes"]}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    assert numbers["peak"] <= numbers["estimate"] <= 4 * numbers["peak"], numbers


def _seam_score(result: torch.Tensor, start: torch.Tensor, tile: int) -> float:
    """How much sharper the change is across columns at multiples of `tile` than across columns elsewhere."""
    change = (result - start)[0].mean(0)
    across = (change[:, 1:] - change[:, :-1]).abs().mean(0)  # one value per column boundary
    at_cuts = torch.stack([across[c - 1] for c in range(tile, change.shape[1], tile)]).mean()
    return (at_cuts / across.median()).item()


def test_shifting_the_tile_grid_leaves_no_seams(squeezenet_weights, monkeypatch):
    content = images.load(need_shared(IMAGES / "tubingen.jpg").read_bytes(), 256)
    style = images.load(need_shared(IMAGES / "starry_night.jpg").read_bytes(), 256)
    options = StyleOptions(model="squeezenet1_1", weights=str(squeezenet_weights), size=256, iterations=15, tile=64,
                           scales=1, device="cpu", tv_weight=0)
    shifted = stylize(content, style, options)
    assert shifted.extra["memory"]["plan"][-1]["tile"] == 64 and len(shifted.extra["scales"]) == 2
    # The same run with the grid held still: the check must be able to see seams where they exist.
    real_randint = torch.randint
    monkeypatch.setattr(tiling.torch, "randint", lambda low, high, size, generator=None: torch.zeros(size, dtype=torch.long))
    fixed = stylize(content, style, options)
    monkeypatch.setattr(tiling.torch, "randint", real_randint)
    assert _seam_score(fixed.image, content, 64) > 1.5, "a fixed grid should leave visible seams"
    assert _seam_score(shifted.image, content, 64) < 1.3
