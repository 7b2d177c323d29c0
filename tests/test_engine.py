"""The optimisation on real pretrained features and real images (SqueezeNet, small sizes)."""

import pytest
import torch

from stylecore import BadOptions, NonFiniteLoss, StyleOptions, images, stylize
from stylecore.planning import make_plan
from stylecore.features import MODELS

SIZE = 96


@pytest.fixture(scope="module")
def pair(tubingen_bytes, starry_bytes):
    return images.load(tubingen_bytes, SIZE), images.load(starry_bytes, SIZE)


def squeezenet(weights, **overrides) -> StyleOptions:
    base = dict(model="squeezenet1_1", weights=str(weights), size=SIZE, iterations=60, device="cpu")
    return StyleOptions(**{**base, **overrides})


def test_style_loss_falls_and_the_image_changes(pair, squeezenet_weights):
    content, style = pair
    seen = []
    result = stylize(content, style, squeezenet(squeezenet_weights), on_iteration=seen.append)
    assert [r.iteration for r in result.history] == list(range(1, 61))
    assert seen == result.history
    first, last = result.history[0], result.history[-1]
    assert last.style * 5 <= first.style, (first.style, last.style)
    assert last.total < first.total
    assert result.image.shape == content.shape
    assert (result.image - content).abs().mean() > 0.02
    assert result.plan.preprocessing == "caffe"  # known file by hash
    assert result.weights_sha256.startswith("9e6744a8")
    assert all(b.seconds >= a.seconds for a, b in zip(result.history, result.history[1:]))


def test_same_inputs_and_seed_give_the_same_bytes(pair, squeezenet_weights):
    content, style = pair
    options = squeezenet(squeezenet_weights, iterations=15, init="noise", seed=7)
    first = images.encode_png(stylize(content, style, options).image)
    second = images.encode_png(stylize(content, style, options).image)
    assert first == second
    other_seed = images.encode_png(stylize(content, style, options.merged({"seed": 8})).image)
    assert other_seed != first


def test_adam_also_lowers_the_loss(pair, squeezenet_weights):
    content, style = pair
    result = stylize(content, style, squeezenet(squeezenet_weights, optimizer="adam", iterations=40, lr=0.02))
    assert result.history[-1].total < result.history[0].total
    assert len(result.history) == 40


def test_explicit_weights_override_the_defaults(pair, squeezenet_weights):
    content, style = pair
    options = squeezenet(squeezenet_weights, iterations=3, content_weight=0, tv_weight=0, style_weights=[1, 0, 0, 0])
    result = stylize(content, style, options)
    assert result.history[0].content == 0 and result.history[-1].tv == 0
    assert result.plan.style_weights == (1.0, 0.0, 0.0, 0.0)


def test_style_strength_doubles_the_style_term_exactly(pair, squeezenet_weights):
    content, style = pair
    once = stylize(content, style, squeezenet(squeezenet_weights, iterations=1, precision="fp32"))
    twice = stylize(content, style, squeezenet(squeezenet_weights, iterations=1, precision="fp32", style_strength=2))
    assert twice.plan.style_weights == tuple(2 * w for w in once.plan.style_weights)
    first, doubled = once.history[0], twice.history[0]  # both evaluated at the content image
    assert doubled.style == 2 * first.style and doubled.content == first.content and doubled.tv == first.tv
    assert StyleOptions().fingerprint_fields() == StyleOptions(style_strength=1).fingerprint_fields()
    assert "style_strength" not in StyleOptions().fingerprint_fields()  # digests from before it existed still match
    assert StyleOptions(style_strength=2).digest() != StyleOptions().digest()


def test_content_weight_default_scales_with_area():
    spec_pixels = MODELS["vgg16"].reference_pixels
    small = make_plan(StyleOptions(), "caffe", spec_pixels // 4, torch.device("cpu"))
    full = make_plan(StyleOptions(), "caffe", spec_pixels, torch.device("cpu"))
    assert small.content_weight == pytest.approx(4 * full.content_weight)


def test_unknown_layer_is_a_bad_option(pair, squeezenet_weights):
    content, style = pair
    with pytest.raises(BadOptions, match="relu4_2"):
        stylize(content, style, squeezenet(squeezenet_weights, content_layer="relu4_2"))


def test_a_diverging_loss_stops_with_a_reason(pair, squeezenet_weights):
    content, style = pair
    poisoned = content.clone()
    poisoned[..., 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="iteration 1"):
        stylize(poisoned, style, squeezenet(squeezenet_weights, iterations=3))


def test_bf16_autocast_lands_near_fp32(pair, squeezenet_weights):
    content, style = pair
    fp32 = stylize(content, style, squeezenet(squeezenet_weights, precision="fp32", iterations=30))
    bf16 = stylize(content, style, squeezenet(squeezenet_weights, precision="bf16", iterations=30))
    assert bf16.plan.precision == "bf16"
    assert bf16.final.total == pytest.approx(fp32.final.total, rel=0.15)


def test_cuda_on_a_machine_without_it_is_a_bad_option(pair, squeezenet_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    content, style = pair
    with pytest.raises(BadOptions, match="CUDA is not available"):
        stylize(content, style, squeezenet(squeezenet_weights).merged({"device": "cuda"}))
