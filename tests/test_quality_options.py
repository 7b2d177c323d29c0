"""Multi-scale, colour control, style scale and early stop, on the real network at small sizes."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from stylecore import StyleOptions, colour, images, stylize
from stylecore.planning import planned_iterations, scale_sizes

from . import images as fixtures


def _load(name: str, size: int) -> torch.Tensor:
    return images.load(fixtures.sample_png(name), size)


def options(weights, **overrides) -> StyleOptions:
    return StyleOptions(**{"model": "squeezenet1_1", "weights": str(weights), "size": 128, "iterations": 10, "device": "cpu", **overrides})


def test_scale_sizes_double_up_to_the_output_and_stop_at_64_px():
    assert scale_sizes(768, 1024, 3) == [(192, 256), (384, 512), (768, 1024)]
    assert scale_sizes(96, 128, 4) == [(96, 128)]  # 48 px would be too small for the deepest layers
    assert planned_iterations(StyleOptions(size=1024, scales=3, iterations=50, coarse_iterations=100), 768, 1024) == 250


def test_multi_scale_reaches_a_lower_loss_in_the_same_full_size_iterations(squeezenet_weights):
    content, style = _load("tubingen.jpg", 256), _load("starry_night.jpg", 256)
    single = stylize(content, style, options(squeezenet_weights, size=256, iterations=10))
    seen = []
    multi = stylize(content, style, options(squeezenet_weights, size=256, iterations=10, scales=2, coarse_iterations=40), on_iteration=seen.append)
    assert [s.size for s in multi.scales] == [(128, 96), (256, 192)]
    assert [r.scale for r in multi.history] == [0] * 40 + [1] * 10 and seen == multi.history
    assert [r.iteration for r in multi.history] == list(range(1, 51))
    assert multi.best_iteration > 40 and multi.image.shape == content.shape
    assert multi.final.total < 0.8 * single.final.total, (multi.final.total, single.final.total)


def test_luminance_only_transfer_keeps_the_content_colours(squeezenet_weights):
    content, style = _load("tubingen.jpg", 128), _load("starry_night.jpg", 128)
    plain = stylize(content, style, options(squeezenet_weights, iterations=20))
    kept = stylize(content, style, options(squeezenet_weights, iterations=20, colour="luminance"))

    def chroma_gap(image):
        return (colour.rgb_to_yiq(image)[:, 1:] - colour.rgb_to_yiq(content)[:, 1:]).abs().mean().item()

    def luma_gap(image):
        return (colour.luminance(image) - colour.luminance(content)).abs().mean().item()

    assert chroma_gap(kept.image) < 0.005 < chroma_gap(plain.image)  # the content's I and Q, up to clamping
    assert luma_gap(kept.image) > 0.005  # while the luminance was stylised


def test_histogram_matching_gives_the_style_the_content_palette():
    content, style = _load("tubingen.jpg", 128), _load("starry_night.jpg", 128)
    matched = colour.match_histograms(style, content)
    assert matched.shape == style.shape
    for channel in range(3):
        assert matched[0, channel].mean() == pytest.approx(content[0, channel].mean().item(), abs=0.01)
        assert abs(style[0, channel].mean() - content[0, channel].mean()) > 0.03  # it did differ before


def test_histogram_colour_option_runs_and_differs_from_plain(squeezenet_weights):
    content, style = _load("tubingen.jpg", 96), _load("starry_night.jpg", 96)
    plain = stylize(content, style, options(squeezenet_weights, size=96, iterations=5))
    matched = stylize(content, style, options(squeezenet_weights, size=96, iterations=5, colour="histogram"))
    assert (plain.image - matched.image).abs().mean() > 0.005


def test_style_scale_sets_the_style_size_relative_to_the_output():
    assert StyleOptions(size=512, style_scale=0.5).style_longer_side() == 256
    assert StyleOptions(size=512, style_size=300).style_longer_side() == 300
    assert StyleOptions(size=512).style_longer_side() == 512
    with pytest.raises(ValidationError, match="style_size and style_scale both set"):
        StyleOptions(style_size=300, style_scale=0.5)


def test_early_stop_records_where_it_stopped(squeezenet_weights):
    content, style = _load("tubingen.jpg", 96), _load("starry_night.jpg", 96)
    result = stylize(content, style, options(squeezenet_weights, size=96, iterations=500, early_stop=0.02, early_stop_window=5))
    (stop,) = result.early_stops
    assert stop.scale == 0 and 5 < stop.iteration < 500
    assert len(result.history) == stop.iteration
    last = result.history[-6:]  # the window: the best loss improved by under 2% at each of its iterations
    best = [min(r.total for r in result.history[: r.iteration]) for r in last]
    assert all((a - b) / a < 0.02 for a, b in zip(best, best[1:]))
    full = stylize(content, style, options(squeezenet_weights, size=96, iterations=stop.iteration + 20))
    assert full.early_stops == []
