"""Batched optimisation: each image of a batch is optimised as it would be alone."""

from __future__ import annotations

import math

import pytest
import torch

from stylecore import BadOptions, Job, NonFiniteLoss, StyleOptions, images, lockstep, stylize, stylize_batch
from stylecore import engine
from stylecore.targets import blended_grams, style_targets

from . import images as fixtures

SIZE = 64


def _load(name: str, size: int = SIZE) -> torch.Tensor:
    return images.load(fixtures.sample_png(name), size)


@pytest.fixture(scope="module")
def pictures():
    return {name: _load(f"{name}.jpg") for name in ("tubingen", "starry_night", "the_scream", "composition_vii")}


def options(weights, **overrides) -> StyleOptions:
    return StyleOptions(**{"model": "squeezenet1_1", "weights": str(weights), "size": SIZE, "iterations": 8, "device": "cpu", **overrides})


# --- the lockstep optimiser on a function with no network in the way: batch == alone, bit for bit ---------


def _rosenbrock_like(batch: dict[int, torch.Tensor], centres: dict[int, float]) -> dict:
    """A per-image non-convex objective: each image's loss and gradient depend on that image alone."""
    answers = {}
    for index, pixels in batch.items():
        x = pixels.detach().clone().requires_grad_(True)
        loss = ((x - centres[index]) ** 2).sum() + 0.5 * (x[..., 1:] - x[..., :-1] ** 2).pow(2).sum()
        loss.backward()
        value = loss.detach()
        answers[index] = (torch.stack([value, value * 0, value * 0, value]), x.grad)
    return answers


@pytest.mark.parametrize("optimizer,lr", [("lbfgs", 1.0), ("adam", 0.05)])
def test_lockstep_gives_each_image_what_it_would_get_alone(optimizer, lr):
    starts = {i: torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(i)) for i in range(4)}
    centres = {0: 0.2, 1: 0.5, 2: 0.8, 3: 0.3}
    settings = dict(optimizer=optimizer, lr=lr, iterations=25, scale=0, clock=lambda: 0.0)
    together = lockstep.optimise(
        starts, lambda b: _rosenbrock_like(b, centres), first_iteration={i: 1 for i in starts}, **settings
    )
    for index, start in starts.items():
        alone = lockstep.optimise(
            {index: start}, lambda b: _rosenbrock_like(b, centres), first_iteration={index: 1}, **settings
        )[index]
        assert [r.total for r in alone.history] == [r.total for r in together[index].history]
        assert torch.equal(alone.best.pixels, together[index].best.pixels)
    assert together[0].history[-1].total < together[0].history[0].total


def test_a_joint_optimiser_would_not_match_so_the_lockstep_is_what_makes_it_exact():
    """The control: one L-BFGS over the concatenated batch shares a line search, so image 0 sees other points."""
    starts = {i: torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(i)) for i in range(2)}
    centres = {0: 0.2, 1: 0.8}
    pixels = torch.cat([starts[0], starts[1]]).requires_grad_(True)
    joint = torch.optim.LBFGS([pixels], lr=1.0, max_iter=6, max_eval=6, tolerance_grad=-1, tolerance_change=-1,
                              history_size=50, line_search_fn="strong_wolfe")
    seen_by_first = []

    def closure():
        joint.zero_grad()
        answers = _rosenbrock_like({0: pixels[0:1], 1: pixels[1:2]}, centres)
        pixels.grad = torch.cat([answers[0][1], answers[1][1]])
        seen_by_first.append(answers[0][0][3].item())
        return answers[0][0][3] + answers[1][0][3]

    joint.step(closure)
    alone = lockstep.optimise({0: starts[0]}, lambda b: _rosenbrock_like(b, centres), optimizer="lbfgs", lr=1.0,
                              iterations=6, first_iteration={0: 1}, scale=0, clock=lambda: 0.0)[0]
    alone_losses = [r.total for r in alone.history]
    assert seen_by_first[0] == pytest.approx(alone_losses[0])  # same start
    assert seen_by_first[1:6] != pytest.approx(alone_losses[1:6], rel=1e-3)  # then other steps


# --- on the real network -------------------------------------------------------------------------------------


def test_a_batch_matches_one_by_one_within_float_noise(pictures, squeezenet_weights):
    contents = [pictures["tubingen"], pictures["tubingen"].flip(-1), 1 - pictures["tubingen"]]
    styles = [pictures["starry_night"], pictures["the_scream"], pictures["composition_vii"]]
    opts = options(squeezenet_weights, precision="fp32")
    batch = stylize_batch([Job(c, [(s, 1.0)]) for c, s in zip(contents, styles)], opts)
    assert batch[0].scales[0].batch == 3  # really one batch of three
    for content, style, together in zip(contents, styles, batch):
        alone = stylize(content, style, opts)
        assert len(alone.history) == len(together.history) == 8
        # The first evaluations agree to float precision; a batched convolution sums in another order, and
        # the line search amplifies that a little over the run. "Small tolerance": 1% of the loss, 1% of the range.
        assert alone.history[0].total == pytest.approx(together.history[0].total, rel=1e-5)
        assert alone.final.total == pytest.approx(together.final.total, rel=0.01)
        assert (alone.image - together.image).abs().mean() < 0.01


def test_with_adam_a_batch_matches_one_by_one_closely(pictures, squeezenet_weights):
    opts = options(squeezenet_weights, optimizer="adam", lr=0.02, iterations=10, precision="fp32")
    contents = [pictures["tubingen"], pictures["tubingen"].flip(-2)]
    batch = stylize_batch([Job(c, [(pictures["starry_night"], 1.0)]) for c in contents], opts)
    for content, together in zip(contents, batch):
        alone = stylize(content, pictures["starry_night"], opts)
        assert (alone.image - together.image).abs().max() < 2e-3


def test_one_diverging_image_fails_alone_and_the_batch_goes_on(pictures, squeezenet_weights):
    broken = pictures["tubingen"].clone()
    broken[..., 10, 10] = float("nan")  # a NaN in the content makes that image's loss NaN, no one else's
    jobs = [Job(pictures["tubingen"], [(pictures["starry_night"], 1.0)]), Job(broken, [(pictures["starry_night"], 1.0)])]
    good, bad = stylize_batch(jobs, options(squeezenet_weights))
    assert isinstance(bad, NonFiniteLoss) and "loss became nan" in str(bad)
    assert len(good.history) == 8 and math.isfinite(good.final.total)


def test_a_batch_needs_one_size(pictures, squeezenet_weights):
    small = _load("tubingen.jpg", 32)
    with pytest.raises(BadOptions, match="one content size"):
        stylize_batch([Job(pictures["tubingen"], [(pictures["starry_night"], 1.0)]), Job(small, [(pictures["starry_night"], 1.0)])],
                      options(squeezenet_weights))


def test_style_targets_are_computed_once_per_style(pictures, squeezenet_weights):
    style_targets.clear()
    jobs = [Job(pictures["tubingen"].roll(k, -1), [(pictures["the_scream"], 1.0)]) for k in range(3)]
    stylize_batch(jobs, options(squeezenet_weights, iterations=2))
    assert (style_targets.misses, style_targets.hits) == (1, 2)
    stylize(pictures["tubingen"], pictures["the_scream"], options(squeezenet_weights, iterations=2))
    assert (style_targets.misses, style_targets.hits) == (1, 3)  # the next pair with that style: cached
    stylize(pictures["tubingen"], pictures["starry_night"], options(squeezenet_weights, iterations=2))
    assert style_targets.misses == 2


def test_out_of_memory_halves_the_batch_then_tiles(pictures, squeezenet_weights, monkeypatch):
    real_forward = engine.Encoder.forward

    def small_device(self, pixels):  # a "device" that holds one image of at most 40,000 pixels with gradients
        if pixels.requires_grad and (pixels.shape[0] > 1 or pixels.shape[-1] * pixels.shape[-2] > 40_000):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
        return real_forward(self, pixels)

    monkeypatch.setattr(engine.Encoder, "forward", small_device)
    opts = options(squeezenet_weights, size=256, iterations=3)
    content, style = _load("tubingen.jpg", 256), _load("starry_night.jpg", 256)
    results = stylize_batch([Job(content, [(style, 1.0)]), Job(content.flip(-1), [(style, 1.0)])], opts)
    for result in results:
        assert result.image.shape == content.shape
        assert len(result.history) == 3  # what the failed attempts recorded was discarded
        fallbacks = result.fallbacks
        assert fallbacks == [
            "256×192: out of memory at batch 2, retried at batch 1",
            "256×192: out of memory for one image, retried in tiles of 128",
        ]
        assert result.memory_record()["plan"][-1] | {"estimate_bytes": 0} == {
            "size": [256, 192], "iterations": 3, "estimate_bytes": 0, "batch": 1, "tile": 128,
        }


def test_out_of_memory_everywhere_is_one_clear_error(pictures, squeezenet_weights, monkeypatch):
    def no_memory(self, pixels):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(engine.Encoder, "forward", no_memory)
    with pytest.raises(engine.OutOfMemory, match="out of memory even in tiles of 128 px"):
        stylize(pictures["tubingen"], pictures["starry_night"], options(squeezenet_weights, size=256, iterations=2))


def test_blended_targets_are_the_weighted_mean_of_grams():
    a, b = torch.ones(2, 2), torch.zeros(2, 2)
    (mixed,) = blended_grams([(a,), (b,)], [3.0, 1.0])
    assert torch.allclose(mixed, torch.full((2, 2), 0.75))


def test_a_blend_of_one_style_with_itself_is_that_style(pictures, squeezenet_weights):
    opts = options(squeezenet_weights, iterations=4)
    single = stylize(pictures["tubingen"], pictures["the_scream"], opts)
    blend = stylize(pictures["tubingen"], [(pictures["the_scream"], 1.0), (pictures["the_scream"], 3.0)], opts)
    assert [r.total for r in single.history] == pytest.approx([r.total for r in blend.history], rel=1e-6)
    other = stylize(pictures["tubingen"], [(pictures["the_scream"], 1.0), (pictures["starry_night"], 1.0)], opts)
    assert other.history[0].style != pytest.approx(single.history[0].style, rel=0.01)
