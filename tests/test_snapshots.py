"""snapshot_every: the best image every N iterations, numbered across scales, and no change to what is made."""

from __future__ import annotations

import torch

from stylecore import StyleOptions, images, stylize
from stylecore.images import quantise

from . import images as fixtures


def _pair(size: int = 64):
    return images.load(fixtures.sample_png("tubingen.jpg"), size), images.load(fixtures.sample_png("starry_night.jpg"), size)


def options(weights, **overrides) -> StyleOptions:
    return StyleOptions(**{"model": "squeezenet1_1", "weights": str(weights), "size": 64, "iterations": 6, "device": "cpu", **overrides})


def test_every_nth_iteration_keeps_the_best_image_so_far(squeezenet_weights):
    content, style = _pair()
    plain = stylize(content, style, options(squeezenet_weights))
    result = stylize(content, style, options(squeezenet_weights, snapshot_every=2))
    assert [s.iteration for s in result.snapshots] == [2, 4, 6] and plain.snapshots == []
    assert all(s.pixels.dtype == torch.uint8 and s.pixels.shape == content.shape for s in result.snapshots)
    assert torch.equal(result.snapshots[-1].pixels, quantise(result.image))  # the last one is the output
    assert torch.equal(result.image, plain.image)  # snapshots change nothing that is made


def test_snapshots_are_numbered_across_scales_at_each_scales_size(squeezenet_weights):
    content, style = _pair(256)
    result = stylize(content, style, options(squeezenet_weights, size=256, scales=2, coarse_iterations=4, iterations=4, snapshot_every=3))
    assert [(s.iteration, s.scale, tuple(s.pixels.shape[-2:])) for s in result.snapshots] == [(3, 0, (96, 128)), (6, 1, (192, 256))]


def test_luminance_snapshots_have_the_content_colours_like_the_output(squeezenet_weights):
    content, style = _pair()
    result = stylize(content, style, options(squeezenet_weights, colour="luminance", iterations=2, snapshot_every=2))
    (last,) = result.snapshots
    assert (last.pixels.int() - quantise(result.image).int()).abs().max() <= 2  # joined from 8 bits, not from floats


def test_snapshot_every_leaves_fingerprints_alone():
    assert StyleOptions(snapshot_every=10).digest() == StyleOptions().digest()
    assert "snapshot_every" not in StyleOptions().fingerprint_fields()
