"""Memory estimates made before running, and tiles for images that do not fit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from stylecore import StyleOptions, images, memory, stylize, tiling
from stylecore.features import MODELS

from . import images as fixtures
from .conftest import ROOT

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
print(json.dumps({"peak": peak, "estimate": result.scales[0].estimate_bytes}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    assert numbers["peak"] <= numbers["estimate"] <= 4 * numbers["peak"], numbers


def _seam_score(result: torch.Tensor, start: torch.Tensor, tile: int) -> float:
    """How much sharper the change is across the columns at multiples of `tile` than just beside them (1: no seam)."""
    change = (result - start)[0].mean(0)
    across = (change[:, 1:] - change[:, :-1]).abs().mean(0)  # one value per column boundary
    ratios = [across[c - 1] / torch.cat([across[c - 6 : c - 2], across[c + 1 : c + 5]]).mean() for c in range(tile, change.shape[1], tile)]
    return torch.stack(ratios).mean().item()


def test_shifting_the_tile_grid_leaves_no_seams(squeezenet_weights, monkeypatch):
    from stylecore.engine import load_encoder, load_weights
    from stylecore.planning import make_plan
    from stylecore.targets import style_targets

    content = images.load(fixtures.sample_png("tubingen.jpg"), 256)
    style = images.load(fixtures.sample_png("starry_night.jpg"), 256)
    options = StyleOptions(model="squeezenet1_1", weights=str(squeezenet_weights), device="cpu", tv_weight=0)
    loaded = load_weights(options)
    plan = make_plan(options, loaded.preprocessing, content.shape[-1] * content.shape[-2], torch.device("cpu"))
    encoder = load_encoder(plan.spec, loaded, (plan.content_layer, *plan.style_layers), torch.device("cpu"))
    grams = style_targets.grams(encoder, loaded.sha256, plan.style_layers, style)

    def tiled():
        best, history, _, _ = tiling.optimise_tiled(
            encoder, plan, content, grams, content, tile=64, iterations=60, seed=0, first_iteration=1, scale=0,
            clock=lambda: 0.0, lr=0.05,
        )
        assert history[-1].total < history[0].total
        return best.pixels

    shifted = tiled()
    # The same run with the grid held still: the check must see seams where they exist.
    monkeypatch.setattr(tiling.torch, "randint", lambda low, high, size, generator=None: torch.zeros(size, dtype=torch.long))
    fixed = tiled()
    assert _seam_score(fixed, content, 64) > 1.5, "a grid held still leaves seams at its cuts"
    assert _seam_score(shifted, content, 64) < 1.2


def test_an_explicit_tile_size_tiles_the_output_after_a_coarse_start(squeezenet_weights):
    content = images.load(fixtures.sample_png("tubingen.jpg"), 256)
    style = images.load(fixtures.sample_png("starry_night.jpg"), 256)
    options = StyleOptions(model="squeezenet1_1", weights=str(squeezenet_weights), size=256, iterations=4, tile=128, device="cpu")
    result = stylize(content, style, options)
    assert [s.size for s in result.scales] == [(128, 96), (256, 192)]  # a whole coarse scale first, so tiles refine
    assert [s.tile for s in result.scales] == [None, 128]
    assert [r.scale for r in result.history] == [0] * 4 + [1] * 4 and result.image.shape == content.shape


def test_a_memory_limit_below_the_estimate_tiles(squeezenet_weights):
    content = images.load(fixtures.sample_png("tubingen.jpg"), 256)
    style = images.load(fixtures.sample_png("starry_night.jpg"), 256)
    options = StyleOptions(model="squeezenet1_1", weights=str(squeezenet_weights), size=256, iterations=3, device="cpu")
    whole = memory.estimate(MODELS["squeezenet1_1"], MODELS["squeezenet1_1"].index_of("7"), 192, 256, "lbfgs", torch.float32)
    result = stylize(content, style, options, memory_limit=whole.total() - 1)
    final = result.memory_record()["plan"][-1]
    assert final["tile"] is not None and final["size"] == [256, 192]
    assert result.memory_budget == whole.total() - 1
    assert result.fallbacks == ["256×192 does not fit whole: started at 128×96, tiled the output"]
