"""StyleOptions: the one typed options model, shared by the engine, the CLI, the manifest and the flows.

Every field is validated here once, so a bad value is reported with its field
name wherever it came from (a flag, a manifest line, a flow parameter).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelName = Literal["vgg16", "vgg19", "squeezenet1_1"]
Preprocessing = Literal["torchvision", "caffe"]

# How often a pair's state is saved by default: a checkpoint costs under 2% of the optimisation (README, Preemption).
CHECKPOINT_EVERY = 20

# Finite, non-negative floats: NaN and ±inf are rejected with the field's name.
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class StyleOptions(BaseModel):
    """What to optimise and how. `None` means "the chosen model's default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelName = Field("vgg16", description="Feature network.")
    weights: str | None = Field(
        None, description="Weights file or URI (local or s3://); default: torchvision cache, then the offline cache."
    )
    preprocessing: Preprocessing | None = Field(
        None, description="Input the weights expect; known files set it themselves, unknown ones default to torchvision."
    )
    size: int = Field(512, ge=16, le=8192, description="Output's longer side in pixels; the content's aspect is kept.")
    style_size: int | None = Field(
        None, ge=16, le=8192, description="Style image's longer side in pixels; default: the output size."
    )
    style_scale: Annotated[float, Field(gt=0.05, le=8, allow_inf_nan=False)] | None = Field(
        None, description="Style image's longer side relative to the output's (bigger = larger brush strokes); excludes style_size."
    )
    iterations: int = Field(300, ge=1, le=100_000, description="Forward+backward passes at the output size.")
    scales: int = Field(1, ge=1, le=6, description="Sizes, coarse to fine, each twice the last and warm-started from it.")
    coarse_iterations: int | None = Field(
        None, ge=1, le=100_000, description="Iterations at each scale below the output size; default: iterations."
    )
    colour: Literal["style", "luminance", "histogram"] = Field(
        "style",
        description="style: take the style's colours; luminance: transfer luminance only and keep the content's "
        "colours; histogram: match the style's colour histogram to the content's first.",
    )
    early_stop: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = Field(
        None, description="Stop a scale once the best loss improves by less than this fraction per iteration for a window."
    )
    early_stop_window: int = Field(20, ge=2, le=10_000, description="Iterations the early-stop tolerance must hold.")
    tile: int | None = Field(
        None, ge=64, le=8192, description="Optimise the output size in tiles of this many pixels (shifted every iteration); "
        "default: only where the image does not fit in memory.",
    )
    content_weight: Weight | None = Field(None, description="w in content_loss; default: the model's.")
    style_weights: list[Weight] | None = Field(None, description="One weight per style layer; default: the model's.")
    style_strength: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = Field(
        1.0, description="A factor on every style weight: 2 gives the style twice the say, 0.5 half."
    )
    tv_weight: Weight | None = Field(None, description="w in tv_loss; default: the model's.")
    content_layer: str | None = Field(None, description="Layer name (relu4_2 for VGG, 3 for SqueezeNet).")
    style_layers: list[str] | None = Field(None, description="Layer names; default: the model's.")
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] | None = Field(
        None, description="Step size; default 1.0 for lbfgs, 0.02 for adam."
    )
    init: Literal["content", "noise"] = Field("content", description="Start from the content image or from noise.")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N, mps.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 network (preprocessing, Gram matrices and losses stay fp32); auto: where measured faster."
    )
    snapshot_every: int | None = Field(
        None, ge=1, le=100_000, description="Also write the image every N iterations (snapshots/iter-0100.png, …); default: none."
    )
    checkpoint_every: int = Field(
        CHECKPOINT_EVERY, ge=0, le=100_000,
        description="stylize run: save each pair's whole optimisation state every N iterations, so a killed run resumes "
        "from there (0: never).",
    )

    @field_validator("content_layer", mode="before")
    @classmethod
    def _layer_as_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("style_layers", mode="before")
    @classmethod
    def _layers_as_text(cls, value):
        if isinstance(value, (str, int)):
            value = [value]
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("style_weights", mode="before")
    @classmethod
    def _weights_as_list(cls, value):
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in {"auto", "cpu", "cuda", "mps"} or (index and (head != "cuda" or not index.isdigit())):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _one_style_size(self):
        if self.style_size is not None and self.style_scale is not None:
            raise ValueError("style_size and style_scale both set; give one (pixels, or relative to size)")
        return self

    def style_longer_side(self) -> int:
        """The style image's longer side at the output size (scales below shrink it in proportion)."""
        if self.style_size is not None:
            return self.style_size
        if self.style_scale is not None:
            return max(16, min(8192, round(self.size * self.style_scale)))
        return self.size

    @model_validator(mode="after")
    def _weights_match_layers(self):
        if self.style_layers is not None and self.style_weights is not None:
            if len(self.style_layers) != len(self.style_weights):
                raise ValueError(
                    f"style_weights has {len(self.style_weights)} values but style_layers has {len(self.style_layers)}"
                )
        if self.style_weights is not None and not all(math.isfinite(w) for w in self.style_weights):
            raise ValueError("style_weights must be finite")
        return self

    def merged(self, overrides: dict) -> "StyleOptions":
        """These options with `overrides` on top, validated as a whole."""
        return StyleOptions.model_validate({**self.model_dump(exclude_unset=True), **overrides})

    def fingerprint_fields(self) -> dict:
        """What decides the output bytes; `device` is where, not what, `snapshot_every` only adds pictures of the
        way there and `checkpoint_every` only how often the state is saved (a resumed run gives the same bytes), so
        they are left out; a default `style_strength` is left out so outputs made before it existed still match."""
        exclude = {"device", "snapshot_every", "checkpoint_every"} | ({"style_strength"} if self.style_strength == 1.0 else set())
        return self.model_dump(mode="json", exclude=exclude)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint_fields(), sort_keys=True).encode()).hexdigest()
