"""Layer names, truncation, freezing and preprocessing of the feature networks."""

import pytest
import torch
from torch import nn

from stylecore.features import MODELS, Encoder, model_spec


def test_vgg19_layer_names_follow_gatys():
    names = MODELS["vgg19"].layer_names
    assert names[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert names.index("relu4_2") == 22
    assert names.index("relu5_1") == 29
    assert len(names) == 37


def test_vgg16_layer_names():
    names = MODELS["vgg16"].layer_names
    assert names.index("relu4_2") == 20
    assert names.index("relu5_1") == 25
    assert names[-1] == "pool5"


def test_defaults_are_the_papers_and_the_course_assignments():
    assert MODELS["vgg19"].style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert MODELS["vgg19"].content_layer == "relu4_2"
    assert MODELS["squeezenet1_1"].content_layer == "3"
    assert MODELS["squeezenet1_1"].style_layers == ("1", "4", "6", "7")
    for spec in MODELS.values():
        for defaults in spec.defaults.values():
            assert len(defaults.style_weights) == len(spec.style_layers)


def test_unknown_layer_and_model_are_named():
    with pytest.raises(ValueError, match="relu9_9"):
        model_spec("vgg16").index_of("relu9_9")
    with pytest.raises(ValueError, match="known: vgg16"):
        model_spec("alexnet")


def test_encoder_is_cut_after_the_deepest_layer_frozen_and_in_eval():
    spec = MODELS["vgg19"]
    encoder = Encoder(spec, spec.build(), "torchvision", ["relu1_1", "relu2_1"])
    assert len(encoder.body) == spec.layer_names.index("relu2_1") + 1
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training
    out = encoder(torch.rand(1, 3, 32, 32))
    assert set(out) == {"relu1_1", "relu2_1"}
    assert out["relu2_1"].shape == (1, 128, 16, 16)


def test_tapped_conv_output_survives_the_relu_after_it():
    spec = MODELS["vgg16"]
    encoder = Encoder(spec, spec.build(), "torchvision", ["conv1_1", "relu1_1"])
    out = encoder(torch.rand(1, 3, 16, 16))
    assert (out["conv1_1"] < 0).any()  # an in-place ReLU would have zeroed these
    assert torch.equal(out["relu1_1"], out["conv1_1"].clamp_min(0))


@pytest.mark.parametrize(
    "preprocessing, expected",
    [("caffe", [127.5 - 123.68, 127.5 - 116.779, 127.5 - 103.939]), ("torchvision", [(0.5 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])],
)
def test_preprocessing(preprocessing, expected):
    spec = MODELS["squeezenet1_1"]
    encoder = Encoder(spec, spec.build(), preprocessing, ["1"])
    normalised = encoder.normalize(torch.full((1, 3, 2, 2), 0.5))
    assert normalised[0, :, 0, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_unknown_preprocessing_is_refused():
    spec = MODELS["squeezenet1_1"]
    with pytest.raises(ValueError, match="preprocessing"):
        Encoder(spec, spec.build(), "bgr", ["1"])


def test_squeezenet_names_are_torchvision_indices():
    spec = MODELS["squeezenet1_1"]
    assert isinstance(spec.build()[3], nn.Module)
    assert spec.index_of("7") == 7
