"""Feature networks: which layers exist, which the method uses, and how inputs are prepared.

Each model is torchvision's `features` stack, cut after the deepest layer the
losses read, frozen and in eval mode. Pixels enter in [0, 1] RGB; the encoder
applies the preprocessing its weights were trained with, so the optimised image
never has to know whether the weights came from torchvision or from Caffe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision import models as tv_models

# Mean of the ImageNet training set on the [0, 255] scale, in RGB order (Caffe / Oxford weights).
CAFFE_MEAN_255 = (123.68, 116.779, 103.939)
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LossDefaults:
    content_weight: float
    style_weights: tuple[float, ...]
    tv_weight: float


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Sequential]
    layer_names: tuple[str, ...]  # one name per module of `features`, by position
    content_layer: str
    style_layers: tuple[str, ...]
    torchvision_weights: str  # attribute path in torchvision.models, e.g. "VGG16_Weights.IMAGENET1K_V1"
    # Loss weights per preprocessing: the two input scales differ by ~58×, so
    # content losses differ by ~58² and style losses by ~58⁴.
    defaults: dict[str, LossDefaults] = field(default_factory=dict)
    # Content weight is given for this many output pixels and scaled by area:
    # the content loss is a sum over H·W, the normalised style loss is not.
    reference_pixels: int = 512 * 512

    def index_of(self, layer: str) -> int:
        try:
            return self.layer_names.index(layer)
        except ValueError:
            known = ", ".join(n for n in self.layer_names if not n.startswith(("conv", "pool")) or n == layer)
            raise ValueError(f"unknown layer {layer!r} for {self.name}; known: {known}") from None


def _vgg_layer_names(features: nn.Sequential) -> tuple[str, ...]:
    names, block, conv = [], 1, 0
    for module in features:
        if isinstance(module, nn.Conv2d):
            conv += 1
            names.append(f"conv{block}_{conv}")
        elif isinstance(module, nn.ReLU):
            names.append(f"relu{block}_{conv}")
        else:
            names.append(f"pool{block}")
            block, conv = block + 1, 0
    return tuple(names)


def _vgg_features(builder) -> Callable[[], nn.Sequential]:
    return lambda: builder(weights=None).features


def _squeezenet_features() -> nn.Sequential:
    return tv_models.squeezenet1_1(weights=None).features


_GATYS_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Tuned on Tübingen × Starry Night with the Oxford weights: each style layer starts out contributing
# about equally (the raw Gram distances differ by 10⁴ across layers), and content holds the scene together.
_VGG_CAFFE = LossDefaults(content_weight=2e-8, style_weights=(2e-3, 1.5e-6, 2.5e-7, 1e-6, 8e-4), tv_weight=1e-1)
_SQUEEZENET_CAFFE = LossDefaults(content_weight=2e-7, style_weights=(6e-3, 3e-4, 3e-4, 1.2e-3), tv_weight=1e-1)


def _scaled(d: LossDefaults, factor: float) -> LossDefaults:
    """Defaults for torchvision-normalised inputs, from the Caffe ones (features ≈ factor × smaller)."""
    return LossDefaults(
        content_weight=d.content_weight * factor**2,
        style_weights=tuple(w * factor**4 for w in d.style_weights),
        tv_weight=d.tv_weight,
    )


_SCALE = 255 * sum(TORCHVISION_STD) / 3  # ≈ 57.8: a Caffe input is this many times a torchvision one

MODELS: dict[str, ModelSpec] = {
    "vgg16": ModelSpec(
        name="vgg16",
        build=_vgg_features(tv_models.vgg16),
        layer_names=_vgg_layer_names(tv_models.vgg16(weights=None).features),
        content_layer="relu4_2",
        style_layers=_GATYS_STYLE,
        torchvision_weights="VGG16_Weights.IMAGENET1K_V1",
        defaults={"caffe": _VGG_CAFFE, "torchvision": _scaled(_VGG_CAFFE, _SCALE)},
    ),
    "vgg19": ModelSpec(
        name="vgg19",
        build=_vgg_features(tv_models.vgg19),
        layer_names=_vgg_layer_names(tv_models.vgg19(weights=None).features),
        content_layer="relu4_2",
        style_layers=_GATYS_STYLE,
        torchvision_weights="VGG19_Weights.IMAGENET1K_V1",
        defaults={"caffe": _VGG_CAFFE, "torchvision": _scaled(_VGG_CAFFE, _SCALE)},
    ),
    "squeezenet1_1": ModelSpec(
        name="squeezenet1_1",
        build=_squeezenet_features,
        layer_names=tuple(str(i) for i in range(13)),
        content_layer="3",
        style_layers=("1", "4", "6", "7"),
        torchvision_weights="SqueezeNet1_1_Weights.IMAGENET1K_V1",
        defaults={"caffe": _SQUEEZENET_CAFFE, "torchvision": _scaled(_SQUEEZENET_CAFFE, _SCALE)},
    ),
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


class Encoder(nn.Module):
    """A frozen feature stack that returns the named layers' activations for [0, 1] RGB input."""

    def __init__(
        self,
        spec: ModelSpec,
        features: nn.Sequential,
        preprocessing: str,
        layers: Iterable[str],
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        wanted = sorted({spec.index_of(layer) for layer in layers})
        if not wanted:
            raise ValueError("no layers requested")
        self.spec = spec
        self.preprocessing = preprocessing
        self.taps = {index: spec.layer_names[index] for index in wanted}
        body = features[: wanted[-1] + 1]
        for module in body.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False  # a tapped conv output must survive the ReLU after it
        # bf16 weights are stored once rather than cast on every forward, as autocast would do for
        # parameters that need no gradient; preprocessing stays fp32 so the input loses nothing before the cast.
        self.compute_dtype = compute_dtype
        self.body = body.eval().requires_grad_(False).to(compute_dtype)
        if preprocessing == "caffe":  # x·255 − mean₂₅₅  ==  (x − mean₂₅₅/255) / (1/255)
            mean, std = torch.tensor(CAFFE_MEAN_255) / 255.0, torch.full((3,), 1.0 / 255.0)
        elif preprocessing == "torchvision":
            mean, std = torch.tensor(TORCHVISION_MEAN), torch.tensor(TORCHVISION_STD)
        else:
            raise ValueError(f"unknown preprocessing {preprocessing!r}; known: torchvision, caffe")
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("std", std.view(1, 3, 1, 1))

    def normalize(self, pixels: Tensor) -> Tensor:
        return (pixels - self.mean) / self.std

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        x = self.normalize(pixels).to(self.compute_dtype).contiguous(memory_format=torch.channels_last)
        out: dict[str, Tensor] = {}
        for index, module in enumerate(self.body):
            x = module(x)
            if index in self.taps:
                out[self.taps[index]] = x
        return out

    def train(self, mode: bool = True):  # frozen: always eval, whatever a caller asks
        return super().train(False)
